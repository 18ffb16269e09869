"""Loading, validating and identifying bundles: what users of load_bundle / parse_bundle rely on."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from rule_engine.bundle.models import OPERATORS, RuleBundle, load_bundle, parse_bundle
from rule_engine.bundle.schema import bundle_json_schema
from rule_engine.bundle.schema import main as schema_main
from rule_engine.errors import BundleTestFailure, BundleValidationError, Problem
from rule_engine.evaluation.selftest import run_bundle_tests
from tests.strategies import bundle_like_documents, dumps, json_values, mutated_documents, unicode_text

ROOT = Path(__file__).parent.parent
EXAMPLE = Path(__file__).parent / "cases" / "issue_example.json"
DOC = ROOT / "docs" / "bundle-format.md"
EXAMPLE_BUNDLES = sorted((ROOT / "bundles").glob("*.json"))


def _example() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    return document


def _minimal(**extra: Any) -> dict[str, Any]:
    return {"bundle_id": "b", "version": "1", "rules": [], **extra}


# --- the example bundle ---------------------------------------------------------------------------


def test_issue_example_loads_and_passes_its_tests() -> None:
    """The example bundle from the issue is valid and every one of its tests passes."""
    bundle = load_bundle(EXAMPLE)
    assert [rule.id for rule in bundle.rules] == ["deny-blocked-country", "challenge-high-risk", "throttle-bots"]
    assert [test.name for test in bundle.tests] == ["blocked country is denied", "ordinary login is allowed"]
    run_bundle_tests(bundle)


def test_doc_example_is_the_issue_example() -> None:
    """The example in docs/bundle-format.md is byte for byte tests/cases/issue_example.json."""
    block = re.search(r"## Example\n\n```json\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block is not None
    assert block.group(1) == EXAMPLE.read_text(encoding="utf-8")


def test_doc_quotes_the_example_digest() -> None:
    """The digest the format doc quotes for its example is the digest of that exact text."""
    quoted = re.findall(r"`([0-9a-f]{64})`", DOC.read_text(encoding="utf-8"))
    assert quoted == [load_bundle(EXAMPLE).digest]


def test_changed_expectation_fails_naming_the_test() -> None:
    """run_bundle_tests reports each failing test at tests[i] with expected and actual decisions."""
    document = _example()
    document["tests"][0]["expect"] = {"decision": "allow"}
    document["tests"][1]["expect"] = {"decision": "allow", "rule_id": "throttle-bots"}
    with pytest.raises(BundleTestFailure) as caught:
        run_bundle_tests(parse_bundle(json.dumps(document)))
    first, second = caught.value.problems
    assert first.path == "tests[0]"
    assert "blocked country is denied" in first.message
    assert "'allow'" in first.message
    assert "'deny'" in first.message
    assert second.path == "tests[1]"
    assert "ordinary login is allowed" in second.message


def test_test_raising_an_evaluation_error_fails_even_if_on_error_matches() -> None:
    """A test whose event raises an evaluation error fails, and the report carries the error."""
    document = _example()
    document["on_error"] = {"decision": "challenge"}
    document["tests"] = [
        {
            "name": "string-risk",
            "event": {"agent_id": "api_gateway", "flow_id": "login", "risk_score": "0.93"},
            "expect": {"decision": "challenge"},
        }
    ]
    with pytest.raises(BundleTestFailure) as caught:
        run_bundle_tests(parse_bundle(json.dumps(document)))
    (problem,) = caught.value.problems
    assert problem.path == "tests[0]"
    assert "string-risk" in problem.message
    assert "risk_score" in problem.message


# --- digest ---------------------------------------------------------------------------------------


def _reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _reorder(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [_reorder(item) for item in value]
    return value


def test_digest_ignores_key_order_and_whitespace() -> None:
    """Re-indenting, reordering keys and escaping non-ASCII does not change the digest."""
    document = _example()
    document["description"] = "Accès à l'API"
    original = parse_bundle(json.dumps(document, ensure_ascii=False)).digest
    assert parse_bundle(json.dumps(_reorder(document), indent=7)).digest == original
    assert parse_bundle(json.dumps(document, separators=(",", ":"), ensure_ascii=True)).digest == original
    assert re.fullmatch(r"[0-9a-f]{64}", original)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["rules"][1].update(priority=51),
        lambda d: d["rules"][0]["when"]["all"][0].update(value=["KP"]),
        lambda d: d["rules"].reverse(),
        lambda d: d.update(description="changed"),
        lambda d: d["tests"].pop(),
        lambda d: d["default"].update(reason=None),
    ],
    ids=["priority", "leaf-value", "rule-order", "description", "test-removed", "explicit-null"],
)
def test_digest_changes_with_content(change: Any) -> None:
    """Any change to the written content, even writing out a default, gives another digest."""
    document = _example()
    before = parse_bundle(json.dumps(document)).digest
    change(document)
    assert parse_bundle(json.dumps(document)).digest != before


@pytest.mark.parametrize("path", [*EXAMPLE_BUNDLES, EXAMPLE], ids=lambda p: p.name)
def test_digest_is_the_documented_formula(path: Path) -> None:
    """digest is sha256 of json.dumps(json.loads(text), sort_keys, compact, ensure_ascii=False), as documented."""
    text = path.read_text(encoding="utf-8")
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert parse_bundle(text).digest == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_digest_numbers_as_parsed() -> None:
    """Floats are canonicalised by value (1e2 is 100.0) but stay distinct from integers (1.0 is not 1)."""

    def digest(value: str) -> str:
        rule = f'{{"id": "r", "when": {{"field": "a", "op": "eq", "value": {value}}}, "then": {{"decision": "x"}}}}'
        return parse_bundle(f'{{"bundle_id": "b", "version": "1", "rules": [{rule}]}}').digest

    assert digest("1e2") == digest("100.0") == digest("100.00")
    assert digest("100") != digest("100.0")


def test_digest_is_of_the_document_as_written() -> None:
    """Defaults are not filled in: an omitted priority and an explicit priority 0 differ in digest."""
    document = _example()
    del document["rules"][2]["priority"]
    omitted = parse_bundle(json.dumps(document))
    document["rules"][2]["priority"] = 0
    explicit = parse_bundle(json.dumps(document))
    assert omitted.rules[2].priority == explicit.rules[2].priority == 0
    assert omitted.digest != explicit.digest


# --- the two entry points agree -------------------------------------------------------------------


@pytest.mark.parametrize("path", [*EXAMPLE_BUNDLES, EXAMPLE], ids=lambda p: p.name)
def test_model_validate_json_and_load_bundle_agree(path: Path) -> None:
    """RuleBundle.model_validate_json, parse_bundle and load_bundle build the same bundle."""
    text = path.read_text(encoding="utf-8")
    loaded = load_bundle(path)
    assert RuleBundle.model_validate_json(text) == loaded
    assert parse_bundle(text.encode()) == loaded
    assert RuleBundle.model_validate_json(text).digest == loaded.digest


def test_model_validate_json_raises_bundle_validation_error() -> None:
    """model_validate_json rejects like load_bundle does, with BundleValidationError, not pydantic's error."""
    with pytest.raises(BundleValidationError) as caught:
        RuleBundle.model_validate_json('{"bundle_id": "b", "version": "1"}')
    assert not isinstance(caught.value, ValidationError)
    assert [str(p) for p in caught.value.problems] == ["$: missing required key 'rules'"]


# --- immutability ---------------------------------------------------------------------------------


def test_bundle_is_immutable() -> None:
    """Assigning to a bundle, a rule or a condition raises; the rules are a tuple."""
    bundle = load_bundle(EXAMPLE)
    with pytest.raises(ValidationError):
        bundle.version = "3"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        bundle.rules[0].priority = 0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        bundle.rules[1].when.field = "x"  # type: ignore[union-attr]
    assert isinstance(bundle.rules, tuple)


# --- problems: all at once, at their place, naming the file ---------------------------------------


def test_independent_problems_are_reported_together() -> None:
    """Three independent leaf errors in different rules give three problems, each at its path."""
    document = _example()
    document["rules"][0]["when"]["all"][0]["op"] = "inn"
    document["rules"][1]["when"]["value"] = "high"
    document["rules"][1]["when"]["op"] = "starts_with"
    document["rules"][1]["when"]["value"] = 5
    document["rules"][2]["when"]["value"] = "(?<=a)b"
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps(document))
    assert [p.path for p in caught.value.problems] == [
        "rules[0].when.all[0].op",
        "rules[1].when.value",
        "rules[2].when.value",
    ]
    assert "(3 problems)" in str(caught.value)


def test_load_bundle_names_the_file(tmp_path: Path) -> None:
    """load_bundle's message starts with the file's path, for invalid content and unreadable files."""
    path = tmp_path / "broken.json"
    path.write_text('{"bundle_id": "b"}', encoding="utf-8")
    with pytest.raises(BundleValidationError) as caught:
        load_bundle(path)
    assert str(caught.value).startswith(f"{path}: invalid bundle")
    assert caught.value.source == str(path)
    with pytest.raises(BundleValidationError, match="cannot read file") as missing:
        load_bundle(tmp_path / "absent.json")
    assert str(tmp_path / "absent.json") in str(missing.value)


def test_error_message_format() -> None:
    """A problem renders as '<path>: <message>' after 'invalid bundle: '."""
    document = _example()
    document["rules"][0]["when"]["all"][1]["not"]["op"] = "gtt"
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps(document))
    assert str(caught.value).startswith("invalid bundle: rules[0].when.all[1].not.op: unknown operator 'gtt'")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"bundle_id": "b", "version": "1", "rules": [], "version": "2"}', "version"),
        (
            '{"bundle_id": "b", "version": "1", "rules": [{"id": "r", "then": {"decision": "a", "decision": "b"}}]}',
            "rules[0].then.decision",
        ),
        (
            '{"bundle_id": "b", "version": "1", "rules": [], "tests": [{"name": "t", "event": {"a b": 1, "a b": 2},'
            ' "expect": {"decision": "skip"}}]}',
            'tests[0].event["a b"]',
        ),
    ],
    ids=["top-level", "nested", "odd-key"],
)
def test_duplicate_json_key_is_reported_at_its_path(text: str, path: str) -> None:
    """A key written twice in one object is rejected at the repeated key's path."""
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(text)
    assert [(p.path, "duplicate key" in p.message) for p in caught.value.problems] == [(path, True)]


def test_duplicate_key_is_reported_with_other_problems() -> None:
    """A duplicate key is reported along with structural problems, not hidden behind them."""
    text = '{"bundle_id": "b", "version": "1", "version": "2", "rules": 3}'
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(text)
    assert {p.path for p in caught.value.problems} == {"rules", "version"}


def test_same_key_in_different_objects_is_fine() -> None:
    """Sibling objects may use the same keys; only a repeat within one object is an error."""
    document = _example()
    assert parse_bundle(json.dumps(document)).rules[0].id == "deny-blocked-country"


@pytest.mark.parametrize("op", ["in", "not_in"])
def test_in_list_must_not_be_empty(op: str) -> None:
    """An empty in / not_in list is rejected at the leaf's value."""
    rule = {"id": "r", "when": {"field": "a", "op": op, "value": []}, "then": {"decision": "x"}}
    with pytest.raises(BundleValidationError) as caught:
        parse_bundle(json.dumps(_minimal(rules=[rule])))
    (problem,) = caught.value.problems
    assert problem.path == "rules[0].when.value"
    assert "non-empty list" in problem.message


def test_description_over_the_string_limit_is_rejected() -> None:
    """Descriptions obey the documented 4096-character limit for strings."""
    with pytest.raises(BundleValidationError, match="4096") as caught:
        parse_bundle(json.dumps(_minimal(description="x" * 4097)))
    assert caught.value.problems[0].path == "description"


# --- nothing escapes as another exception ---------------------------------------------------------


def _parse_or_reject(data: str | bytes) -> None:
    """Parse; a rejection must be a BundleValidationError whose every problem has a path and a message."""
    problems: tuple[Problem, ...] = ()
    try:
        parse_bundle(data)
    except BundleValidationError as exc:
        problems = exc.problems or (Problem("", ""),)
    assert all(p.path and p.message for p in problems)


@given(json_values)
def test_any_json_value_is_rejected_cleanly(value: Any) -> None:
    """Arbitrary JSON (including NaN / Infinity literals) gives a bundle or BundleValidationError."""
    _parse_or_reject(dumps(value))


@given(bundle_like_documents)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_bundle_shaped_documents_are_rejected_cleanly(document: Any) -> None:
    """Documents built from real bundle keys give a bundle or BundleValidationError."""
    _parse_or_reject(dumps(document))


@given(st.binary(max_size=200) | unicode_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_rejected_cleanly(data: bytes) -> None:
    """Arbitrary bytes (invalid UTF-8, surrogates, BOMs...) give BundleValidationError, never another error."""
    _parse_or_reject(data)


@given(unicode_text)
def test_any_text_is_rejected_cleanly(text: str) -> None:
    """Arbitrary str input, even with lone surrogates, gives BundleValidationError."""
    _parse_or_reject(text)


@pytest.mark.parametrize("path", [*EXAMPLE_BUNDLES, EXAMPLE], ids=lambda p: p.name)
@given(data=st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_example_bundles_are_accepted_or_rejected_cleanly(path: Path, data: st.DataObject) -> None:
    """Dropping, duplicating or retyping random keys of a real bundle never raises anything but BundleValidationError."""
    document = json.loads(path.read_text(encoding="utf-8"))
    _parse_or_reject(data.draw(mutated_documents(document)))


# --- JSON Schema ----------------------------------------------------------------------------------

SCHEMA_FILE = ROOT / "docs" / "bundle.schema.json"
CORPUS = Path(__file__).parent / "cases" / "malformed"


def _schema_validator() -> Draft202012Validator:
    schema = bundle_json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_checked_in_schema_is_current() -> None:
    """docs/bundle.schema.json equals bundle_json_schema(); regenerate with `python -m rule_engine.bundle.schema`."""
    checked_in = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert checked_in == bundle_json_schema(), (
        "docs/bundle.schema.json is stale; run: python -m rule_engine.bundle.schema > docs/bundle.schema.json"
    )


@pytest.mark.parametrize("path", [*EXAMPLE_BUNDLES, EXAMPLE], ids=lambda p: p.name)
def test_example_bundles_validate_against_schema(path: Path) -> None:
    """Every example bundle is valid under the published JSON Schema."""
    errors = list(_schema_validator().iter_errors(json.loads(path.read_text(encoding="utf-8"))))
    assert errors == []


@pytest.mark.parametrize(
    "name",
    [
        "01-unknown-top-level-key.json",
        "03-leaf-key-typo-vlaue.json",
        "09-unknown-operator-gtt.json",
        "11-in-mixed-kinds.json",
        "13-gt-with-bool.json",
        "15-exists-with-value.json",
        "16-eq-missing-value.json",
        "24-condition-all-and-any.json",
        "25-field-empty-segment.json",
        "39-priority-float.json",
        "49-regex-over-1024.json",
        "52-params-not-an-object.json",
        "61-in-empty-list.json",
    ],
)
def test_schema_rejects_malformed_bundle(name: str) -> None:
    """The schema catches structural mistakes an editor can flag: unknown keys, operators, value kinds."""
    document = json.loads((CORPUS / name).read_text(encoding="utf-8"))
    assert not _schema_validator().is_valid(document)


def test_schema_shape() -> None:
    """The schema is draft 2020-12, closes every object, lists the operators and keys conditions by property."""
    schema = bundle_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    closed = [name for name, d in defs.items() if d.get("type") == "object"]
    assert all(defs[name]["additionalProperties"] is False for name in closed)
    assert schema["additionalProperties"] is False
    assert defs["Leaf"]["properties"]["op"]["enum"] == list(OPERATORS)
    assert [option["$ref"] for option in defs["Condition"]["oneOf"]] == [
        "#/$defs/AllCondition",
        "#/$defs/AnyCondition",
        "#/$defs/NotCondition",
        "#/$defs/Leaf",
    ]
    assert [defs[k]["required"] for k in ("AllCondition", "AnyCondition", "NotCondition", "Leaf")] == [
        ["all"],
        ["any"],
        ["not"],
        ["field", "op"],
    ]


def test_schema_module_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m rule_engine.bundle.schema` prints exactly the checked-in file."""
    schema_main()
    assert capsys.readouterr().out == SCHEMA_FILE.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "path", [*sorted(Path(__file__).parent.parent.joinpath("bundles").glob("*.json")), EXAMPLE], ids=lambda p: p.name
)
def test_canonical_form_from_the_parse_equals_the_models(path: Path) -> None:
    """The canonical text cached while parsing is exactly the one derived from the validated model."""
    bundle = load_bundle(path)
    from_model = RuleBundle.canonical.func(bundle)  # the cached_property's own computation
    assert bundle.canonical == from_model
    reparsed = parse_bundle(json.dumps(json.loads(path.read_bytes()), indent=3, sort_keys=False))
    assert reparsed.digest == bundle.digest
