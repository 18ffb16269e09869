"""check: each comparison's needed type against recorded traffic; finds the gateway-v3-broken defect."""

from __future__ import annotations

import json
import random
from collections import Counter
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from rule_engine import RuleEvaluationError, RuleTable, load_bundle, parse_bundle
from rule_engine.analysis.check import check_events, compatibility
from rule_engine.analysis.events import Recorded, read_events
from rule_engine.analysis.fields import field_uses, kind_of_type, needed_kinds
from rule_engine.bundle.models import Leaf, kind_of
from rule_engine.cli import cli
from rule_engine.cli.demo import make_event
from rule_engine.evaluation.compiler import compile_condition

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
V1, V2, V3 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2", "v3-broken"))
RECORDED = ROOT / "tests" / "cases" / "events" / "gateway.jsonl"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", "memory://", *args])


def table_of(rules: list[dict[str, Any]]) -> RuleTable:
    return RuleTable.from_bundle(parse_bundle(json.dumps({"bundle_id": "t", "version": "1", "rules": rules})))


def recorded(events: list[dict[str, Any]]) -> list[Recorded]:
    return [Recorded(i + 1, e, None) for i, e in enumerate(events)]


def test_check_finds_the_v3_broken_defect_in_the_recorded_events() -> None:
    """session.age_secs compared with a number while api_gateway sends a string: 'raises', exit 1, exact shares."""
    events = [json.loads(line)["event"] for line in RECORDED.read_text(encoding="utf-8").splitlines()]
    strings = [e for e in events if isinstance(e.get("session", {}).get("age_secs"), str)]
    result = invoke("check", V3, "--events", str(RECORDED), "--json")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(
        "error: 1 comparison(s) raise on recorded traffic; first: rule 'challenge-stale-session'"
    )
    findings = json.loads(result.stdout)["findings"]
    assert all({"rule_id", "field", "kind", "share"} <= f.keys() for f in findings)
    raises = [f for f in findings if f["kind"] == "raises"]
    assert [(f["rule_id"], f["field"]) for f in raises] == [("challenge-stale-session", "session.age_secs")]
    assert raises[0]["count"] == len(strings) == 18
    assert raises[0]["share"] == round(len(strings) / len(events), 6)
    per_scope = Counter((e["agent_id"], e["flow_id"]) for e in strings)
    totals = Counter((e.get("agent_id"), e.get("flow_id")) for e in events)
    assert {(s["agent"], s["flow"]): (s["count"], s["events"]) for s in raises[0]["by_scope"]} == {
        k: (n, totals[k]) for k, n in per_scope.items()
    }
    assert {s["agent"] for s in raises[0]["by_scope"]} == {"api_gateway"}


def test_check_finds_the_defect_in_demo_traffic_and_not_in_v2() -> None:
    """On events made like the demo's: v3's type mismatch share is exact per agent/flow; v2 has no 'raises'."""
    rng = random.Random(11)
    events = [make_event(rng)[0] for _ in range(2000)]
    v3 = check_events(RuleTable.from_bundle(load_bundle(V3)), recorded(events)).findings()
    (mismatch,) = [f for f in v3 if f.kind == "type_mismatch" and f.field == "session.age_secs"]
    strings = Counter(
        (e["agent_id"], e["flow_id"]) for e in events if isinstance(e.get("session", {}).get("age_secs"), str)
    )
    assert mismatch.count == sum(strings.values())
    assert mismatch.share == round(sum(strings.values()) / len(events), 6)
    assert mismatch.seen == dict(
        sorted(Counter(kind_of(e["session"]["age_secs"]) for e in events if "session" in e).items())
    )
    totals = Counter((e["agent_id"], e["flow_id"]) for e in events)
    assert {(s["agent"], s["flow"]): s["share"] for s in mismatch.by_scope} == {
        k: round(n / totals[k], 6) for k, n in strings.items()
    }
    assert any(f.kind == "raises" and f.count == sum(strings.values()) for f in v3)
    v2 = check_events(RuleTable.from_bundle(load_bundle(V2)), recorded(events)).findings()
    assert [f for f in v2 if f.kind in ("raises", "type_mismatch")] == []


def test_masked_mismatch_missing_field_and_empty_scope_are_reported_without_failing() -> None:
    """A mismatch an earlier rule keeps from running is a warning; never-carried fields and empty scopes too."""
    table = table_of(
        [
            {"id": "first", "priority": 9, "flows": ["f"], "then": {"decision": "stop"}},
            {"id": "typed", "priority": 5, "when": {"field": "x", "op": "eq", "value": "s"}, "then": {"decision": "t"}},
            {"id": "ghost", "when": {"field": "a.nothere", "op": "gt", "value": 1}, "then": {"decision": "g"}},
            {"id": "elsewhere", "agents": ["zzz"], "when": {"field": "x", "op": "exists"}, "then": {"decision": "e"}},
        ]
    )
    events = [{"flow_id": "f", "x": 1}] * 3 + [{"flow_id": "g", "x": "s", "a": "not an object"}] * 2
    findings = {(f.rule_id, f.kind): f for f in check_events(table, recorded(events)).findings()}
    assert set(findings) == {("typed", "type_mismatch"), ("ghost", "never_carried"), ("elsewhere", "no_traffic")}
    assert findings[("typed", "type_mismatch")].share == 0.6
    assert findings[("typed", "type_mismatch")].example_line == 1
    assert findings[("ghost", "never_carried")].events == 5  # its scope is every event (static: reachability aside)


def test_compatibility_lists_new_fields_and_changed_types() -> None:
    """check NEW --against OLD: fields read only by NEW, no longer read, and needed kinds that changed."""
    result = invoke("check", V3, "--against", V2, "--json")
    assert result.exit_code == 0, result.output
    compat = json.loads(result.stdout)["compatibility"]
    assert compat["added_fields"] == [
        {"field": "session.age_secs", "needs": ["number"], "rule_ids": ["challenge-stale-session"]}
    ]
    assert compat["removed_fields"] == compat["changed_types"] == []
    old = table_of([{"id": "r", "when": {"field": "x", "op": "eq", "value": "1"}, "then": {"decision": "d"}}])
    new = table_of([{"id": "r", "when": {"field": "x", "op": "in", "value": [1, 2]}, "then": {"decision": "d"}}])
    assert compatibility(new, old)["changed_types"] == [
        {"field": "x", "before": ["string"], "after": ["number"], "rule_ids": ["r"]}
    ]


def test_check_needs_events_or_against() -> None:
    """Without --events and --against there is nothing to check: a usage error."""
    result = invoke("check", V3)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: give --events EVENTS, --against OLD, or both")


def test_every_field_of_every_example_rule_is_listed() -> None:
    """field_uses lists each leaf of each rule, in the order the table tries the rules."""
    uses = field_uses(load_bundle(V3))
    assert uses[0].rule_id == "challenge-stale-session"
    assert (uses[0].field, uses[0].op, uses[0].needs) == ("session.age_secs", "gt", frozenset({"number"}))
    assert {u.field for u in uses if u.rule_id == "deny-blocked-country"} == {"geo.country", "user.allowlisted"}


scalar_values = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3) | st.text("ab", max_size=3)
actual_values = st.recursive(
    scalar_values,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text("ab", max_size=2), c, max_size=2),
    max_leaves=5,
)
leaf_documents = st.one_of(
    st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(["eq", "ne"]), scalar_values),
    st.builds(
        lambda op, v: {"op": op, "value": v},
        st.sampled_from(["lt", "lte", "gt", "gte"]),
        st.integers(-3, 3) | st.text("ab", max_size=3),
    ),
    st.builds(
        lambda op, v: {"op": op, "value": v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.integers(-3, 3), min_size=1)
        | st.lists(st.text("ab"), min_size=1)
        | st.lists(st.booleans(), min_size=1),
    ),
    st.builds(lambda v: {"op": "contains", "value": v}, st.booleans() | st.integers(-3, 3) | st.text("ab", max_size=2)),
    st.builds(
        lambda op, v: {"op": op, "value": v},
        st.sampled_from(["starts_with", "ends_with", "matches"]),
        st.text("ab", max_size=2),
    ),
    st.just({"op": "exists"}),
)


@given(leaf_documents, actual_values)
def test_needed_kinds_say_exactly_when_the_compiled_comparison_raises(document: dict[str, Any], actual: Any) -> None:
    """For every operator and value: the compiled leaf raises iff a present value's kind is not a needed kind."""
    try:
        leaf = Leaf.model_validate({"field": "a.f", **document})
    except ValidationError:
        assume(False)
        return
    needs = needed_kinds(leaf)
    match = compile_condition(leaf, "r")
    try:
        match({"a": {"f": actual}})
        raised = False
    except RuleEvaluationError:
        raised = True
    assert raised == (actual is not None and needs is not None and kind_of(actual) not in needs)


@pytest.mark.parametrize("bundle", sorted(BUNDLES.glob("*.json")), ids=lambda p: p.stem)
def test_check_runs_on_every_example_bundle(bundle: Path) -> None:
    """Every example bundle checks against the recorded events (fraud-screen: no traffic in scope)."""
    check = check_events(RuleTable.from_bundle(load_bundle(bundle)), read_events(str(RECORDED)))
    assert check.events == 36
    kinds = {f.kind for f in check.findings()}
    if bundle.stem == "fraud-screen":
        assert kinds == {"no_traffic"}


class _Level(IntEnum):
    LOW = 1


class _Name(str):
    pass


@given(actual_values | st.sampled_from([_Level.LOW, _Name("x"), MappingProxyType({}), (1, 2), b"x"]))
def test_the_kind_of_a_type_is_the_kind_of_its_values(value: Any) -> None:
    """The observer records types; kind_of_type gives the kind kind_of gives their values (None for null)."""
    assert kind_of_type(type(value)) == (None if value is None else kind_of(value))
