"""Hostile bundles: the loader answers BundleValidationError or a bundle, never crashes, never hangs, never runs code.

Every parse is timed; a call over ``HANG_SECS`` fails the test (a hang detector with a generous
bound, not a benchmark). Counts of what was fuzzed are printed at module teardown (run with ``-s``);
``RULE_ENGINE_SOAK=1`` tries many more inputs.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rule_engine import BundleLimits, BundleValidationError, RuleTable, load_bundle, parse_bundle
from rule_engine.evaluation import compiler as compiler_module
from tests.strategies import bundle_like_documents, bundle_like_values, mutated_documents, unicode_text

SOAK = os.environ.get("RULE_ENGINE_SOAK") == "1"
HANG_SECS = 2.0  # CPU seconds: a hang burns CPU, a busy CI machine only stretches wall time
HANG_WALL_SECS = 10.0
BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
EXAMPLES = sorted(BUNDLES.glob("*.json"))
FIGURES: Counter[str] = Counter()
FUZZ = settings(
    max_examples=2_000 if SOAK else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def teardown_module() -> None:
    print(
        "\n[fuzz figures] "
        + ", ".join(f"{k}={v}" for k, v in sorted(FIGURES.items()))
        + f" (profile: {'soak' if SOAK else 'ci'})"
    )


def _parse_cleanly(data: str | bytes, kind: str, **kwargs: Any) -> None:
    """Parse ``data``: success or BundleValidationError only, within HANG_SECS."""
    FIGURES[kind] += 1
    start, cpu = time.perf_counter(), time.process_time()
    problems: tuple[Any, ...] | None = None
    try:
        parse_bundle(data, **kwargs)
    except BundleValidationError as exc:
        problems = exc.problems
    FIGURES[f"{kind}:{'accepted' if problems is None else 'rejected'}"] += 1
    assert problems is None or problems, "a rejection names at least one problem"
    elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    assert used < HANG_SECS, f"parse used {used:.2f}s of CPU on a {len(data)}-unit {kind} input"
    assert elapsed < HANG_WALL_SECS, f"parse took {elapsed:.2f}s on a {len(data)}-unit {kind} input"


# --- generated documents and bytes ---------------------------------------------------------------------


@FUZZ
@given(bundle_like_documents)
def test_bundle_shaped_documents_parse_or_fail_cleanly(document: dict[str, Any]) -> None:
    """Documents shaped like bundles (real keys, random values) are accepted or rejected cleanly."""
    _parse_cleanly(json.dumps(document, allow_nan=True), "generated_documents")


@FUZZ
@given(st.binary(max_size=2_000) | st.sampled_from([b"{", b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe{}"]))
def test_raw_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    """Arbitrary byte strings (and deep-nesting bombs) are rejected cleanly."""
    _parse_cleanly(data, "raw_bytes")


# --- mutations of the example bundles -------------------------------------------------------------------


def _nested_list(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


_HOSTILE_VALUES: list[Any] = [
    "x" * 200_000,  # huge string
    "\u202e\u0000\ufeff\U0001f4a9\u0301" * 50,  # RTL override, NUL, BOM, astral, combining
    list(range(50_000)),  # giant list
    _nested_list(40),  # deep list
    {"all": [{"not": {"field": "a", "op": "exists"}}] * 3},
    -0.0,
    2**80,
    None,
    True,
    {},
    [],
]
_TEXT_EDITS: list[tuple[str, Callable[[str], str]]] = [
    ("1e400", lambda text: re.sub(r"(?<=: )\d+\b", "1e400", text, count=1)),
    ("nan", lambda text: re.sub(r"(?<=: )\d+\b", "NaN", text, count=1)),
    ("lone-surrogate", lambda text: text.replace('"allow"', '"\\ud800allow"', 1)),
    ("deepen", lambda text: text.replace('"when": ', '"when": ' + '{"not": ' * 5_000, 1) + "}" * 5_000),
    ("truncate", lambda text: text[: len(text) // 2]),
    ("bom", lambda text: "\ufeff" + text),
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*path, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*path, index)))
    return found


@st.composite
def hostile_mutations(draw: st.DrawFn) -> tuple[str, str]:
    """An example bundle after one hostile edit; returns (edit, text)."""
    document = json.loads(draw(st.sampled_from(EXAMPLES)).read_text(encoding="utf-8"))
    edit = draw(st.sampled_from(["retype", "hostile-value", "delete", "text", "structural"]))
    if edit == "text":
        name, change = draw(st.sampled_from(_TEXT_EDITS))
        return name, change(json.dumps(document, indent=1, ensure_ascii=False))
    if edit == "structural":
        return "structural", draw(mutated_documents(document))
    path = draw(st.sampled_from(_paths(document)[1:]))
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    if edit == "delete":
        del parent[path[-1]]
    elif edit == "retype":
        parent[path[-1]] = draw(bundle_like_values | unicode_text)
    else:
        parent[path[-1]] = draw(st.sampled_from(_HOSTILE_VALUES))
    return edit, json.dumps(document, allow_nan=True, ensure_ascii=draw(st.booleans()))


@FUZZ
@given(hostile_mutations())
def test_mutated_example_bundles_parse_or_fail_cleanly(mutation: tuple[str, str]) -> None:
    """Example bundles with keys deleted, retyped, made huge, deep, weird or non-finite are handled cleanly."""
    edit, text = mutation
    FIGURES[f"mutation:{edit}"] += 1
    _parse_cleanly(text, "mutations")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_bundle_survives_every_text_edit(path: Path, tmp_path: Path) -> None:
    """Each fixed hostile text edit of each example bundle fails cleanly, through parse_bundle and load_bundle."""
    text = json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=1)
    for name, change in _TEXT_EDITS:
        edited = change(text)
        if edited == text:
            continue
        _parse_cleanly(edited, "fixed_edits")
        target = tmp_path / f"{name}.json"
        target.write_text(edited, encoding="utf-8", errors="surrogatepass")
        with pytest.raises(BundleValidationError) as exc:
            load_bundle(target)
        assert str(target) in str(exc.value)


# --- limits at the boundary ------------------------------------------------------------------------------


def _rule(index: int, when: Any = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": f"r{index}", "then": {"decision": "deny"}}
    if when is not None:
        rule["when"] = when
    return rule


def _doc(rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"bundle_id": "limits", "version": "1", "rules": rules, **extra}


def _nots(depth: int) -> dict[str, Any]:
    """A condition whose leaf sits at nesting ``depth`` (the ``when`` itself is depth 1)."""
    condition: dict[str, Any] = {"field": "a", "op": "exists"}
    for _ in range(depth - 1):
        condition = {"not": condition}
    return condition


LIMITS = BundleLimits(max_bytes=4_000, max_rules=5, max_depth=6, max_string=40, max_regex=20, max_list=8)


def _at(limit: int, what: str) -> dict[str, Any]:
    """A document exactly at ``limit`` of the named dimension (under LIMITS)."""
    if what == "max_rules":
        return _doc([_rule(i) for i in range(limit)])
    if what == "max_depth":
        return _doc([_rule(0, _nots(limit))])
    if what == "max_string":
        return _doc([_rule(0)], description="d" * limit)
    if what == "max_regex":
        return _doc([_rule(0, {"field": "a", "op": "matches", "value": "a" * limit})])
    if what == "max_list":
        return _doc([_rule(0, {"field": "a", "op": "in", "value": list(range(limit))})])
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["max_rules", "max_depth", "max_string", "max_regex", "max_list"])
def test_each_limit_holds_exactly_at_its_boundary(what: str) -> None:
    """At the limit a bundle passes; one over, it fails with a message naming the limit."""
    limit = getattr(LIMITS, what)
    parse_bundle(json.dumps(_at(limit, what)), limits=LIMITS)
    with pytest.raises(BundleValidationError) as exc:
        parse_bundle(json.dumps(_at(limit + 1, what)), limits=LIMITS)
    assert f"limit of {limit}" in str(exc.value)


def test_size_limit_holds_exactly_at_its_boundary(tmp_path: Path) -> None:
    """A bundle of max_bytes passes; one byte more fails, naming the limit, from text and from a file."""
    text = json.dumps(_doc([_rule(0)]))
    exact = text[:-1] + " " * (LIMITS.max_bytes - len(text)) + "}"
    assert len(exact.encode()) == LIMITS.max_bytes
    parse_bundle(exact, limits=LIMITS)
    with pytest.raises(BundleValidationError, match=f"over the limit of {LIMITS.max_bytes:,}"):
        parse_bundle(exact + " ", limits=LIMITS)
    big = tmp_path / "big.json"
    big.write_text(exact + " ", encoding="utf-8")
    with pytest.raises(BundleValidationError, match=f"over the limit of {LIMITS.max_bytes:,}"):
        load_bundle(big, limits=LIMITS)


@pytest.mark.parametrize(
    ("what", "limit"), [("max_string", 4096), ("max_regex", 1024), ("max_list", 10_000), ("max_depth", 32)]
)
def test_default_limits_hold_at_their_boundary(what: str, limit: int) -> None:
    """The default limits (documented in docs/bundle-format.md) hold at the boundary too."""
    assert getattr(BundleLimits(), what) == limit
    parse_bundle(json.dumps(_at(limit, what)))
    with pytest.raises(BundleValidationError) as exc:
        parse_bundle(json.dumps(_at(limit + 1, what)))
    assert f"limit of {limit}" in str(exc.value)


# --- regular expressions -----------------------------------------------------------------------------------

PATHOLOGICAL = ["(a+)+$", "(a|aa)*c", "(a*)*b", "(.*a){12}", "^(([a-z])+.)+[A-Z]([a-z])+$", "(a|a?)+$"]


@pytest.mark.parametrize("pattern", PATHOLOGICAL)
def test_pathological_regexes_run_in_linear_time(pattern: str) -> None:
    """Catastrophic-backtracking patterns are accepted (RE2) and decide a 100k-character event within 1 s."""
    table = RuleTable.from_bundle(
        parse_bundle(json.dumps(_doc([_rule(0, {"field": "s", "op": "matches", "value": pattern})])))
    )
    for text in (
        "a" * 100_000 + "!",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!" * 1_300,
    ):
        start = time.perf_counter()
        table.evaluate({"s": text})
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"{pattern!r} took {elapsed:.2f}s on {len(text):,} characters"
    FIGURES["pathological_regexes"] += 1


@pytest.mark.parametrize("pattern", [r"(a)\1", r"a(?=b)", r"(?<!a)b", r"a{1001}"])
def test_regexes_re2_cannot_run_linearly_are_rejected(pattern: str) -> None:
    """Backreferences, lookaround and oversized repetitions are rejected when the bundle is loaded."""
    with pytest.raises(BundleValidationError, match="regular expression"):
        parse_bundle(json.dumps(_doc([_rule(0, {"field": "s", "op": "matches", "value": pattern})])))


# --- bundles are data ----------------------------------------------------------------------------------------


def _nest(path: str, value: Any) -> dict[str, Any]:
    """An event holding ``value`` at the dotted ``path``."""
    for part in reversed(path.split(".")):
        value = {part: value}
    return dict(value)


CODE = "__import__('os').system('touch {marker}')"


def test_code_in_a_bundle_is_never_executed_or_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python code in values, field names and ids stays data: nothing runs, and no generated source contains it."""
    marker = tmp_path / "pwned"
    code = CODE.format(marker=marker)
    quoted_field = "a'b\"c.__class__.x')) or __import__('os').system('touch " + str(marker) + "') or (('"
    document = _doc(
        [
            {
                "id": code,
                "priority": 2,
                "when": {
                    "any": [
                        {"field": quoted_field, "op": "eq", "value": code},
                        {"field": "s", "op": "matches", "value": "__import__\\('os'\\)"},
                        {"field": "s", "op": "in", "value": [code, "x\"); import os; os.system('touch " + str(marker)]},
                        {"field": f"{code}.b", "op": "starts_with", "value": "'\"\\"},
                    ]
                },
                "then": {"decision": code, "reason": code, "params": {code: code}},
            }
        ],
        default={"decision": "allow", "reason": code},
    )
    sources: list[str] = []
    real_compile = compile

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        sources.append(source if isinstance(source, str) else "")
        return real_compile(source, *args, **kwargs)

    monkeypatch.setattr(compiler_module, "compile", spy, raising=False)
    monkeypatch.setattr(compiler_module, "_shape_cache", {})
    table = RuleTable.from_bundle(parse_bundle(json.dumps(document)))
    events = [
        {"s": "-", **_nest(quoted_field, code)},
        _nest(f"{code}.b", "'\"\\x"),
        {"s": "__import__('os')"},
        {},
    ]
    decisions = [table.evaluate(event).decision for event in events]
    assert decisions == [code, code, code, "allow"]
    assert not marker.exists(), "bundle text was executed"
    assert sources, "the compiler generated no source (the spy did not see it)"
    for source in sources:
        assert "import" not in source
        assert "os" not in re.findall(r"[A-Za-z_]+", source)
        assert not ({"'", '"', "\\"} & set(source)), f"generated source holds a quote: {source!r}"
    FIGURES["generated_sources_checked"] += len(sources)
