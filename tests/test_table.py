"""The compiled rule table: decisions, rule selection, immutability and thread safety."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rule_engine.bundle.models import RuleBundle, load_bundle, parse_bundle
from rule_engine.errors import RuleEvaluationError
from rule_engine.evaluation.selftest import run_bundle_tests
from rule_engine.evaluation.table import Decision, RuleQuery, RuleTable

ROOT = Path(__file__).parent.parent
BUNDLES = ROOT / "bundles"
EVENTS = [
    json.loads(line)
    for line in (Path(__file__).parent / "cases" / "events" / "gateway.jsonl").read_text(encoding="utf-8").splitlines()
]
TABLES = {version: RuleTable.from_bundle(load_bundle(BUNDLES / f"gateway-{version}.json")) for version in ("v1", "v2")}


def _table(*rules: dict[str, Any], **extra: Any) -> RuleTable:
    return RuleTable.from_bundle(parse_bundle(json.dumps({"bundle_id": "t", "version": "1", "rules": rules, **extra})))


def _rule(rule_id: str, priority: int = 0, **fields: Any) -> dict[str, Any]:
    return {"id": rule_id, "priority": priority, "then": {"decision": rule_id}, **fields}


def _decide(table: RuleTable, event: dict[str, Any]) -> tuple[str, str | None, bool]:
    try:
        decision = table.evaluate(event)
    except RuleEvaluationError as exc:
        return table.error_decision(str(exc)).decision, None, True
    return decision.decision, decision.rule_id, False


# --- decisions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("row", EVENTS, ids=[row["event"]["request_id"] for row in EVENTS])
def test_gateway_event_decision(version: str, row: dict[str, Any]) -> None:
    """Each recorded gateway event gets the recorded decision, rule and error status from v1 and v2."""
    expected = row[version]
    assert _decide(TABLES[version], row["event"]) == (expected["decision"], expected["rule_id"], expected["error"])


@pytest.mark.parametrize("path", sorted(BUNDLES.glob("*.json")), ids=lambda p: p.name)
def test_example_bundle_passes_its_own_tests(path: Path) -> None:
    """Every bundle shipped in bundles/ has tests, and they pass."""
    bundle = load_bundle(path)
    assert bundle.tests
    run_bundle_tests(bundle, RuleTable.from_bundle(bundle))


def test_error_decision_carries_on_error_and_the_error() -> None:
    """error_decision gives the bundle's on_error decision (default 'error'), marked with the error."""
    v2 = TABLES["v2"].error_decision("boom")
    assert (v2.decision, v2.reason, v2.rule_id, v2.error, v2.is_error) == (
        "allow",
        "evaluation error: failing open",
        None,
        "boom",
        True,
    )
    assert _table().error_decision("x").decision == "error"


def test_default_decision_is_skip_without_default() -> None:
    """With no rule matching and no default, the decision is 'skip' with no rule id."""
    decision = _table(_rule("never", when={"field": "a", "op": "exists"})).evaluate({})
    assert (decision.decision, decision.rule_id, decision.is_error) == ("skip", None, False)


def test_evaluation_error_names_rule_and_field() -> None:
    """A type mismatch raises RuleEvaluationError naming the rule and the field, not a plain False."""
    table = _table(_rule("old-session", when={"field": "session.age_secs", "op": "gt", "value": 3600}))
    with pytest.raises(RuleEvaluationError) as caught:
        table.evaluate({"session": {"age_secs": "1200"}})
    assert (caught.value.rule_id, caught.value.field) == ("old-session", "session.age_secs")


def test_error_in_an_unreached_rule_does_not_raise() -> None:
    """Evaluation stops at the first matching rule, so a mismatch in a later rule is never hit."""
    table = _table(_rule("first", 10), _rule("second", 0, when={"field": "a", "op": "gt", "value": 1}))
    assert table.evaluate({"a": "not a number"}).rule_id == "first"


def test_equal_priorities_keep_file_order() -> None:
    """Among rules of equal priority the one written first wins; a higher priority beats both."""
    table = _table(_rule("b", 5), _rule("a", 5), _rule("c", 1), _rule("z", 5))
    assert [r.id for r in table.rules] == ["b", "a", "z", "c"]
    assert table.evaluate({}).rule_id == "b"
    assert _table(_rule("low", 1), _rule("high", 2)).evaluate({}).rule_id == "high"


# --- rule selection by agent and flow -------------------------------------------------------------

SELECTION = _table(
    _rule("everywhere", 0),
    _rule("agent-a", 10, agents=["a"]),
    _rule("flow-x", 20, flows=["x"]),
    _rule("a-x", 30, agents=["a"], flows=["x"]),
    _rule("b-y", 40, agents=["b"], flows=["y"]),
)


@pytest.mark.parametrize(
    ("agent", "flow", "expected"),
    [
        ("a", "x", ["a-x", "flow-x", "agent-a", "everywhere"]),
        ("a", "y", ["agent-a", "everywhere"]),
        ("a", None, ["agent-a", "everywhere"]),
        ("b", "y", ["b-y", "everywhere"]),
        ("b", "x", ["flow-x", "everywhere"]),
        ("nobody", "x", ["flow-x", "everywhere"]),
        ("nobody", "nowhere", ["everywhere"]),
        (None, None, ["everywhere"]),
    ],
)
def test_query_merges_wildcards_by_priority(agent: str | None, flow: str | None, expected: list[str]) -> None:
    """query lists the rules that apply to an agent and flow, wildcard rules merged in, by priority."""
    assert [r.id for r in SELECTION.query(RuleQuery(agent=agent, flow=flow))] == expected


def test_query_returns_the_same_tuple_every_time() -> None:
    """Repeated queries return the identical prebuilt tuple: no scan or allocation per call."""
    first = SELECTION.query(RuleQuery("a", "x"))
    assert isinstance(first, tuple)
    assert SELECTION.query(RuleQuery("a", "x")) is first
    assert SELECTION.query(RuleQuery("nobody", "nowhere")) is SELECTION.query(RuleQuery("other", "place"))


def test_events_select_rules_by_agent_id_and_flow_id() -> None:
    """The event's agent_id and flow_id (not agent / flow) pick the applicable rules."""
    assert SELECTION.evaluate({"agent_id": "b", "flow_id": "y"}).rule_id == "b-y"
    assert SELECTION.evaluate({"agent": "b", "flow": "y"}).rule_id == "everywhere"
    assert SELECTION.evaluate({"agent_id": "a"}).rule_id == "agent-a"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"agent_id": ["a"], "flow_id": "x"}, "flow-x"),
        ({"agent_id": "a", "flow_id": ["x"]}, "agent-a"),
        ({"agent_id": {"a": 1}, "flow_id": {"x": 1}}, "everywhere"),
        ({"agent_id": 7, "flow_id": None}, "everywhere"),
    ],
    ids=["list-agent", "list-flow", "dict-both", "number-agent"],
)
def test_unhashable_or_odd_agent_and_flow_are_named_by_no_rule(event: dict[str, Any], expected: str) -> None:
    """An agent_id / flow_id that is a list, dict or number matches no named agent / flow, and does not crash."""
    assert SELECTION.evaluate(event).rule_id == expected
    assert SELECTION.explain(event)[-1] == (expected, "matched")


# --- immutability ---------------------------------------------------------------------------------


def test_table_is_immutable() -> None:
    """Setting or deleting any attribute of a table raises."""
    table = TABLES["v1"]
    with pytest.raises(AttributeError):
        table.version_id = "other"
    with pytest.raises(AttributeError):
        table._rules = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del table.bundle
    with pytest.raises(AttributeError):
        table.anything_new = 1  # type: ignore[attr-defined]


def test_decision_params_are_read_only() -> None:
    """A decision's params (nested objects and lists too) cannot be changed by a caller."""
    table = _table({"id": "r", "then": {"decision": "d", "params": {"rps": 5, "nested": {"k": [1, 2]}}}})
    decision = table.evaluate({})
    with pytest.raises(TypeError):
        decision.params["rps"] = 6  # type: ignore[index]
    with pytest.raises(TypeError):
        decision.params["nested"]["k"] = []
    with pytest.raises(AttributeError):
        decision.params["nested"]["k"].append(3)
    with pytest.raises(AttributeError):
        decision.decision = "x"  # type: ignore[misc]
    assert table.evaluate({}).params == {"rps": 5, "nested": {"k": (1, 2)}}
    assert decision.as_dict()["params"] == {"rps": 5, "nested": {"k": [1, 2]}}


# --- concurrency and hostile input ----------------------------------------------------------------


def test_concurrent_evaluation_gives_identical_results() -> None:
    """Eight threads evaluating every event many times get the same decisions as one thread."""
    table = TABLES["v2"]
    events = [row["event"] for row in EVENTS]

    def run(_: int) -> list[tuple[str, str | None, bool]]:
        return [_decide(table, event) for _ in range(30) for event in events]

    expected = run(0)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(8)))
    assert all(result == expected for result in results)


HOSTILE = '\'); __import__("os").system("x"); (\''


@pytest.mark.parametrize("op", ["eq", "starts_with", "ends_with", "contains", "in"])
def test_hostile_field_name_and_value_are_data(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code-like text in a field name or value is compared as data: it matches itself and runs nothing."""
    import os

    def forbidden(*args: Any) -> int:
        raise AssertionError("bundle text was executed")

    monkeypatch.setattr(os, "system", forbidden)
    value: Any = [HOSTILE] if op == "in" else HOSTILE
    table = _table(_rule("hostile", when={"field": HOSTILE, "op": op, "value": value}))
    outer, inner = HOSTILE.split(".")  # the dot in `__import__("os").system` separates two path segments
    assert table.evaluate({outer: {inner: HOSTILE}}).rule_id == "hostile"
    assert table.evaluate({outer: {inner: "benign"}}).rule_id is None
    assert table.evaluate({HOSTILE: HOSTILE}).rule_id is None


def test_hostile_bundle_text_in_ids_and_decisions_is_data() -> None:
    """Rule ids, decisions and reasons with quotes and code are returned verbatim."""
    rule = {"id": HOSTILE, "then": {"decision": HOSTILE, "reason": HOSTILE + "\n\\"}}
    decision = _table(rule).evaluate({})
    assert (decision.rule_id, decision.decision, decision.reason) == (HOSTILE, HOSTILE, HOSTILE + "\n\\")


def test_table_remembers_its_bundle_and_version() -> None:
    """A table built with a version_id stamps it on every decision and keeps the bundle's digest."""
    bundle: RuleBundle = load_bundle(BUNDLES / "gateway-v2.json")
    table = RuleTable.from_bundle(bundle, version_id="v-42")
    decision: Decision = table.evaluate({"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "KP"}})
    assert (decision.version_id, table.digest, table.bundle) == ("v-42", bundle.digest, bundle)
    assert table.default_decision.version_id == "v-42"
