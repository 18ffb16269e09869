"""Regression tests of the data-plane defects of the hardening issue (D1-D3, D18-D21, D27, D28).

Each test names the defect it closes (docs: routing.md "The bytes hashed", bundle-format.md
"Limits" and "Regular expressions"). Crashes are tested in a subprocess, so a crash fails the
test instead of killing pytest.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rule_engine import RuleEngine, RuleTable, parse_bundle
from rule_engine.bundle import regex
from rule_engine.errors import BundleValidationError, RuleEvaluationError
from rule_engine.evaluation import compiler, index
from rule_engine.evaluation.table import RuleQuery
from rule_engine.serving.recorder import VersionRecorder
from rule_engine.serving.routing import Salt, bucket_of, compute_request_hash, hash_key, key_bytes
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_limits import traced_build  # noqa: E402

KEY_CASES = json.loads((Path(__file__).parent / "cases" / "routing_v1_keys.json").read_text(encoding="utf-8"))


def _table(*rules: dict[str, Any], **extra: Any) -> RuleTable:
    return RuleTable.from_bundle(parse_bundle(json.dumps({"bundle_id": "t", "version": "1", "rules": rules, **extra})))


def _rule(rule_id: str, when: Any = None, priority: int = 0, **fields: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": rule_id, "priority": priority, "then": {"decision": rule_id}, **fields}
    if when is not None:
        rule["when"] = when
    return rule


def _canary_engine(stable: RuleTable, candidate: RuleTable, share_bp: int = 5000) -> tuple[RuleEngine, ServingCell]:
    recorders = VersionRecorder("stable", 1e9), VersionRecorder("candidate", 1e9)
    snapshot = ServingSnapshot.build(
        stable,
        candidate,
        Salt.from_text("canary"),
        share_bp,
        stable_recorder=recorders[0],
        candidate_recorder=recorders[1],
    )
    cell = ServingCell(snapshot)
    return RuleEngine(cell), cell


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


# --- D1: routing keys that are not valid UTF-8 ----------------------------------------------------


def test_surrogate_keys_never_crash_evaluate_during_a_canary() -> None:
    """D1: lone-surrogate keys (given, or read from a json.loads'd event) route and decide; no SIGSEGV."""
    result = _run_python(
        """
        import json
        from rule_engine import Canary, DeploymentManager, RuleEngine, compute_request_hash
        from rule_engine.serving.routing import hash_key

        def bundle(version):
            return {"bundle_id": "b", "version": version, "default": {"decision": "allow"}, "rules": []}

        manager = DeploymentManager(auto_rollback=False)
        manager.activate_deployment(manager.prepare_deployment(bundle("1")))
        manager.activate_deployment(manager.prepare_deployment(bundle("2"), Canary((50, 100), 60)))
        engine = RuleEngine(manager)
        answers = []
        for key in ["\\ud800", "\\udfff", "a\\ud800b", "\\udbff", "x" * 10 + "\\udc00"]:
            answers.append(engine.evaluate({"user_id": key}).decision)
            answers.append(engine.evaluate({}, key=key).decision)
            answers.append(hash_key(key) == compute_request_hash(key))
        event = json.loads('{"user_id": "\\\\ud800"}')
        answers.append(engine.evaluate(event).decision)
        print(json.dumps(answers))
        """
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    answers = json.loads(result.stdout.splitlines()[-1])  # the last line: library logs may precede it
    assert set(answers) == {"allow", True}
    assert len(answers) == 16


def test_manager_route_never_crashes_on_surrogate_keys() -> None:
    """D1: manager.route('\\udfff') during a canary returns a table (stable or candidate), no SIGSEGV."""
    result = _run_python(
        """
        from rule_engine import Canary, DeploymentManager

        def bundle(version):
            return {"bundle_id": "b", "version": version, "rules": []}

        manager = DeploymentManager(auto_rollback=False)
        manager.activate_deployment(manager.prepare_deployment(bundle("1")))
        manager.activate_deployment(manager.prepare_deployment(bundle("2"), Canary((50, 100), 60)))
        tables = [manager.route(key) for key in ["\\ud800", "\\udfff", "a\\ud800b", 10**5000]]
        print(all(table is not None for table in tables))
        """
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.splitlines()[-1] == "True"


@pytest.mark.parametrize("vector", KEY_CASES["vectors"], ids=lambda v: v["bytes_hex"] or "empty")
def test_key_vectors_code_reproduces_them(vector: dict[str, Any]) -> None:
    """D1: key_bytes, hash_key, compute_request_hash and the bucket give the checked-in numbers."""
    if vector["kind"] == "text":
        key: Any = vector["key"]
    elif vector["kind"] == "bytes":
        key = bytes.fromhex(vector["key_hex"])
    else:
        key = {"0": 0, "42": 42, "-7": -7, "18446744073709551616": 2**64, "True": True, "1.5": 1.5}[vector["python"]]
    assert key_bytes(key).hex() == vector["bytes_hex"]
    assert hash_key(key) == compute_request_hash(key) == vector["request_hash"]
    assert bucket_of(vector["request_hash"], Salt.from_text(vector["salt"])) == vector["bucket"]


@pytest.mark.parametrize(
    "vector", [v for v in KEY_CASES["vectors"] if v["kind"] == "text"], ids=lambda v: v["bytes_hex"]
)
def test_key_vectors_spec_reimplementation_reproduces_them(vector: dict[str, Any]) -> None:
    """D1: the spec's rule (surrogatepass bytes, signed mmh3 masked) reproduces the text vectors."""
    data = vector["key"].encode("utf-8", "surrogatepass")
    assert data.hex() == vector["bytes_hex"]
    assert mmh3.hash(data, 0) & 0xFFFF_FFFF == vector["request_hash"]


@given(st.text())
def test_valid_text_keys_hash_as_their_utf8(key: str) -> None:
    """D1: for every valid text key the hash is unchanged: murmur3 of its UTF-8 (v1 vectors hold)."""
    assert hash_key(key) == compute_request_hash(key) == mmh3.hash(key.encode("utf-8"), 0, False)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@pytest.mark.parametrize("key", [10**5000, _Unprintable(), None], ids=["huge-int", "raising-str", "none"])
def test_keys_that_cannot_be_converted_route_to_stable(key: Any) -> None:
    """D1/D3: hash_key gives None (stable) for keys str() cannot convert; compute_request_hash says why."""
    assert hash_key(key) is None
    if key is not None:
        with pytest.raises(ValueError, match="routing key"):
            compute_request_hash(key)


# --- D3: evaluate never raises ------------------------------------------------------------------


class _RaisingMapping(Mapping[str, Any]):
    """A Mapping whose every read raises."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1


class _BadException(Exception):
    def __str__(self) -> str:
        raise RuntimeError("unprintable error")


class _RaisingWithBadMessage(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise _BadException

    def get(self, key: str, default: Any = None) -> Any:
        raise _BadException

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


ODD_CALLS = [
    ({"user_id": 10**5000}, None),
    ({}, 10**5000),
    ({}, _Unprintable()),
    ({"user_id": _Unprintable()}, None),
    (_RaisingMapping(), None),
    (_RaisingWithBadMessage(), None),
    (["not", "a", "mapping"], None),
    (None, None),
    (42, "user-1"),
    ({"user_id": "u1", "amount": _BadRepr()}, None),
    ({"user_id": ["unhashable"], "agent_id": {"a": 1}}, None),
]


@pytest.mark.parametrize(("event", "key"), ODD_CALLS, ids=lambda v: type(v).__name__)
def test_evaluate_never_raises_whatever_the_event_or_key(event: Any, key: Any) -> None:
    """D3: huge-int keys, raising __str__/get/__repr__, non-Mapping events: a decision, never an exception."""
    stable = _table(_rule("big", {"field": "amount", "op": "gt", "value": 10}), default={"decision": "allow"})
    candidate = _table(_rule("big", {"field": "amount", "op": "gt", "value": 10}), default={"decision": "allow"})
    engine, cell = _canary_engine(stable, candidate)
    decision = engine.evaluate(event, key=key)
    assert decision.decision in ("allow", "big", "error")
    recorders = [cell.current.stable_recorder, cell.current.candidate_recorder]
    assert sum(r.totals().evaluations for r in recorders if r is not None) >= 1  # served and counted


# --- D2: NaN and the infinities ---------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "leaf",
    [
        {"field": "risk", "op": "gte", "value": 0.8},
        {"field": "risk", "op": "lt", "value": 1},
        {"field": "risk", "op": "eq", "value": 0.5},
        {"field": "risk", "op": "ne", "value": 0.5},
        {"field": "risk", "op": "in", "value": [0.5, 1]},
        {"field": "risk", "op": "not_in", "value": [0.5, 1]},
    ],
    ids=lambda leaf: leaf["op"],
)
def test_non_finite_event_numbers_are_evaluation_errors(leaf: dict[str, Any], value: float) -> None:
    """D2: a NaN/inf event number compared numerically raises RuleEvaluationError naming rule and field."""
    table = _table(_rule("deny-risky", leaf), default={"decision": "allow"})
    with pytest.raises(RuleEvaluationError) as caught:
        table.evaluate({"risk": value})
    assert (caught.value.rule_id, caught.value.field) == ("deny-risky", "risk")
    assert "finite" in str(caught.value)


def test_nan_from_json_is_an_error_decision_counted_in_health() -> None:
    """D2: json.loads('{"risk": NaN}') no longer fails open: on_error decision, counted as an error."""
    table = _table(
        _rule("deny-risky", {"field": "risk", "op": "gte", "value": 0.8}),
        default={"decision": "allow"},
        on_error={"decision": "review"},
    )
    engine, cell = _canary_engine(table, table, share_bp=0)
    decision = engine.evaluate(json.loads('{"risk": NaN}'))
    assert (decision.decision, decision.is_error) == ("review", True)
    recorder = cell.current.stable_recorder
    assert recorder is not None
    assert recorder.totals().errors == 1
    assert table.evaluate({"risk": 10**400}).rule_id == "deny-risky"  # huge ints are finite numbers


# --- D18: the index keeps wildcards -----------------------------------------------------------


def _wide_bundle(n: int) -> bytes:
    return json.dumps(
        {
            "bundle_id": "wide",
            "version": "1",
            "rules": [
                {"id": "by-agent", "agents": [f"a{i}" for i in range(n)], "then": {"decision": "deny"}},
                {"id": "by-flow", "priority": 5, "flows": [f"f{i}" for i in range(n)], "then": {"decision": "x"}},
                {"id": "both", "priority": 9, "agents": [f"a{i}" for i in range(0, n, 2)], "flows": ["f1", "f2"] * 50}
                | {"then": {"decision": "both"}},
            ],
        }
    ).encode()


def test_wide_agents_and_wide_flows_take_memory_linear_in_the_bundle() -> None:
    """D18: N agents in one rule and N flows in another no longer build N x N cells."""
    raw = _wide_bundle(400)
    table, peak = traced_build(parse_bundle(raw))
    assert peak < 4_000_000 + 100 * len(raw), f"{peak:,} bytes for a {len(raw):,}-byte bundle"
    assert table.evaluate({"agent_id": "a7", "flow_id": "f9"}).rule_id == "by-flow"
    assert table.evaluate({"agent_id": "a8", "flow_id": "f2"}).rule_id == "both"
    assert table.evaluate({"agent_id": "a7", "flow_id": "nope"}).rule_id == "by-agent"
    assert table.evaluate({"agent_id": "nobody", "flow_id": "f3"}).rule_id == "by-flow"
    assert [r.id for r in table.query(RuleQuery("a8", "f1"))] == ["both", "by-flow", "by-agent"]


_AGENTS = ("a", "b", "c", "d")
_FLOWS = ("x", "y", "z", "w")
_scope = st.none() | st.lists(st.sampled_from(_AGENTS), min_size=1, max_size=4)
_flow_scope = st.none() | st.lists(st.sampled_from(_FLOWS), min_size=1, max_size=4)
_rules = st.lists(st.tuples(_scope, _flow_scope, st.integers(-2, 2)), max_size=12)


@pytest.mark.parametrize("budget", [None, 0], ids=["prebuilt", "lazy"])
@given(rules=_rules, pair_limit=st.sampled_from([64, 1, 2]))
def test_index_selects_exactly_the_applicable_rules_in_order(
    budget: int | None, rules: list[Any], pair_limit: int
) -> None:
    """D18: prebuilt or lazy, pair-indexed or wide, query and evaluate give the brute-force answer."""
    budget_of = index.cell_budget if budget is None else (lambda entries: budget)
    with mock.patch.object(index, "PAIR_LIMIT", pair_limit), mock.patch.object(index, "cell_budget", budget_of):
        table = _table(
            *(
                _rule(f"r{i}", None, priority, **({"agents": a} if a else {}), **({"flows": f} if f else {}))
                for i, (a, f, priority) in enumerate(rules)
            )
        )
    order = sorted(range(len(rules)), key=lambda i: (-rules[i][2], i))
    for agent in (*_AGENTS, "other", None):
        for flow in (*_FLOWS, "other", None):
            expected = [
                f"r{i}"
                for i in order
                if (rules[i][0] is None or agent in rules[i][0]) and (rules[i][1] is None or flow in rules[i][1])
            ]
            assert [r.id for r in table.query(RuleQuery(agent, flow))] == expected
            event = {k: v for k, v in (("agent_id", agent), ("flow_id", flow)) if v is not None}
            assert table.evaluate(event).rule_id == (expected[0] if expected else None)
    assert table.evaluate({"agent_id": ["a"], "flow_id": {"x": 1}}).rule_id == next(
        (f"r{i}" for i in order if rules[i][0] is None and rules[i][1] is None), None
    )


# --- D19 / D21: one huge rule ------------------------------------------------------------------


def _huge_rule_bundle(leaves: int) -> bytes:
    items = [{"field": f"f{i % 50}", "op": "eq", "value": f"v{i}"} for i in range(leaves)]
    groups = [{"any": items[i : i + 5000]} for i in range(0, leaves, 5000)]
    rule = {"id": "huge", "when": {"all": [{"field": "go", "op": "exists"}, *groups]}, "then": {"decision": "deny"}}
    return json.dumps({"bundle_id": "huge", "version": "1", "rules": [rule]}).encode()


def _code_objects(matcher: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every code object reachable from a matcher through closures (its parts, their parts...)."""
    seen = set() if seen is None else seen
    if id(matcher) in seen or not hasattr(matcher, "__code__"):
        return
    seen.add(id(matcher))
    yield matcher.__code__
    for cell in matcher.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:
            continue
        yield from _code_objects(content, seen)


def test_a_huge_rule_compiles_into_small_functions() -> None:
    """D19: a 20k-leaf rule becomes many small generated functions, not one (quadratic compile)."""
    table = RuleTable.from_bundle(parse_bundle(_huge_rule_bundle(20_000)))
    codes = list(_code_objects(table.rule("huge").match))
    assert len(codes) > 50
    assert max(len(code.co_code) for code in codes) < 20_000
    matching = {"go": 1, **{f"f{k}": f"v{5000 * k + k}" for k in range(4)}}  # one leaf of each any
    assert table.evaluate(matching).rule_id == "huge"
    assert table.evaluate({**matching, "f3": "v3"}).rule_id is None


def test_an_evicted_huge_rule_leaves_little_in_the_shape_cache() -> None:
    """D21: after a table with a huge rule is dropped, the compiled-code cache keeps little of it."""
    bundle = parse_bundle(_huge_rule_bundle(40_000))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = RuleTable.from_bundle(bundle)
        del table
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 3 * 2**20, f"{retained:,} bytes kept after the table was dropped"
    assert compiler.cached_source_chars() <= compiler._SHAPE_CACHE_CHARS


# --- D20: bounded work for matches ------------------------------------------------------------


def test_regex_over_the_program_size_limit_is_refused_naming_the_rule() -> None:
    """D20/D28: a pattern compiling to more RE2 instructions than the limit is a validation error."""
    document = {
        "bundle_id": "b",
        "version": "1",
        "rules": [_rule("ok"), _rule("slow", {"field": "s", "op": "matches", "value": ".{1000}"})],
    }
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps(document))
    (problem,) = caught.value.problems
    assert problem.path == "rules[1].when.value"
    assert f"over the limit of {regex.MAX_PROGRAM_SIZE}" in problem.message
    assert "(in rule 'slow')" in problem.message


def test_matches_on_a_string_over_the_pattern_limit_is_an_evaluation_error() -> None:
    """D20: a[ab]{999}c on a long event string raises (naming rule and field) instead of running 1.6 s."""
    pattern = "a[ab]{999}c"
    limit = regex.text_limit(pattern)
    assert regex.MIN_MATCH_TEXT <= limit <= regex.MATCH_WORK // regex.program_size(pattern) + 1
    table = _table(_rule("slow", {"field": "s", "op": "matches", "value": pattern}))
    assert table.evaluate({"s": "a" + "b" * 999 + "c"}).rule_id == "slow"
    assert table.evaluate({"s": "ab" * (limit // 2)}).rule_id is None  # at the limit: evaluated
    with pytest.raises(RuleEvaluationError) as caught:
        table.evaluate({"s": "ab" * 50_000})
    assert (caught.value.rule_id, caught.value.field) == ("slow", "s")
    assert str(limit) in str(caught.value)


def test_simple_patterns_accept_long_strings() -> None:
    """D20: the text limit scales with the program: a small pattern still takes a 100k-character string."""
    assert regex.text_limit("(?i)bot|crawler") > 100_000
    table = _table(_rule("bot", {"field": "ua", "op": "matches", "value": "(?i)bot|crawler"}))
    assert table.evaluate({"ua": "x" * 100_000 + "Googlebot"}).rule_id == "bot"


# --- D27 / D28: ids and messages --------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda d: d.update(version="1\x1b]0;owned\x07"), "version"),
        (lambda d: d["rules"][0].update(id="deny\u202ex"), "rules[0].id"),
        (lambda d: d["rules"][0]["then"].update(decision="allow\n"), "rules[0].then.decision"),
        (lambda d: d["rules"][0].update(agents=["gw\u2066"]), "rules[0].agents[0]"),
        (lambda d: d.update(default={"decision": "ok\x00"}), "default.decision"),
    ],
    ids=["version-osc", "rule-id-rlo", "decision-newline", "agent-isolate", "default-nul"],
)
def test_ids_with_control_or_bidi_characters_are_refused(edit: Any, where: str) -> None:
    """D27: control and bidirectional-formatting characters in ids are validation errors at their path."""
    document: dict[str, Any] = {"bundle_id": "b", "version": "1", "rules": [_rule("r")]}
    edit(document)
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps(document))
    assert any(p.path == where and "character U+" in p.message for p in caught.value.problems), caught.value.problems


def test_problems_inside_a_rule_name_the_rule_id() -> None:
    """D28: a problem inside rules[i] names the rule's id as well as its JSON path (both stages)."""
    rules = [_rule(f"r{i}") for i in range(7)]
    rules.append(_rule("deny-x", {"field": "ua", "op": "matches", "value": "(bot"}))
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps({"bundle_id": "b", "version": "1", "rules": rules}))
    assert str(caught.value.problems[0]).startswith("rules[7].when.value: invalid regular expression")
    assert caught.value.problems[0].message.endswith("(in rule 'deny-x')")
    rules[7] = _rule("deny-x", {"field": "ua", "op": "matches", "value": "a" * 1500})
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps({"bundle_id": "b", "version": "1", "rules": rules}))
    assert [str(p) for p in caught.value.problems] == [
        "rules[7].when.value: regular expression of 1500 characters, over the limit of 1024 (in rule 'deny-x')"
    ]
