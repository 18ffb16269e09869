"""Hash dispatch (evaluation/dispatch.py) decides exactly as the first-match scan and the reference interpreter.

Bundles mix dispatchable rules (one ``eq``/``in`` leaf on a field) on several fields and kinds with
rules that are not (other operators, compound conditions), interleaved, at equal and different
priorities, scoped to one pair and everywhere; events carry values of every kind the guards tell
apart (``1`` / ``1.0`` / ``True`` / ``"1"``, null, missing, NaN, a ``str`` subclass, lists, a
non-object on a nested path).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rule_engine import RuleTable, parse_bundle
from rule_engine.errors import RuleEvaluationError
from rule_engine.evaluation.dispatch import MIN_RUN
from rule_engine.evaluation.table import RuleQuery
from tests.reference import Mismatch, reference_match

AGENT, FLOW = "api_gateway", "login"
_STRINGS = ["gold", "silver", "1", "", "GOLD"]
_NUMBERS = [1, 2, 3.5, 0, -1, 10**20]
_FIELDS = {"tier": _STRINGS, "n": _NUMBERS, "flag": [True, False], "geo.country": ["US", "FR", "1"]}


class Text(str):
    """A str subclass: the compiled guard sends it to the slow path."""


@st.composite
def conditions(draw: st.DrawFn, main: str) -> dict[str, Any]:
    field = main if draw(st.integers(0, 3)) else draw(st.sampled_from(sorted(_FIELDS)))  # long runs on `main`
    pool = _FIELDS[field]
    shape = draw(st.sampled_from(["eq", "eq", "eq", "in", "in", "in", "other", "compound"]))
    if shape == "eq":
        return {"field": field, "op": "eq", "value": draw(st.sampled_from(pool))}
    if shape == "in":
        return {"field": field, "op": "in", "value": draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))}
    if shape == "other":
        if pool is _NUMBERS:
            return {"field": field, "op": "gt", "value": draw(st.sampled_from([0, 2]))}
        if draw(st.booleans()):
            return {"field": field, "op": "exists"}
        return {"field": field, "op": "ne", "value": pool[0]}
    return {"all": [{"field": field, "op": "eq", "value": draw(st.sampled_from(pool))}, {"field": "n", "op": "exists"}]}


@st.composite
def bundles(draw: st.DrawFn) -> RuleTable:
    rules = []
    main = draw(st.sampled_from(sorted(_FIELDS)))
    count = draw(st.integers(min_value=0, max_value=40))
    for i in range(count):
        rule: dict[str, Any] = {
            "id": f"r{i}",
            "priority": draw(st.sampled_from([0, 0, 0, 5, 10])),
            "when": draw(conditions(main)),
            "then": {"decision": "deny"},
        }
        if draw(st.booleans()) or draw(st.booleans()):  # most rules in the pair, some everywhere
            rule["agents"], rule["flows"] = [AGENT], [FLOW]
        rules.append(rule)
    raw = {"bundle_id": "dispatch", "version": "1.0.0", "default": {"decision": "allow"}, "rules": rules}
    return RuleTable.from_bundle(parse_bundle(json.dumps(raw)))


_VALUES = st.sampled_from(
    [
        "gold",
        "silver",
        "1",
        "",
        Text("gold"),
        1,
        1.0,
        2,
        3.5,
        0,
        -0.0,
        10**20,
        float(10**20),
        True,
        False,
        None,
        math.nan,
        math.inf,
        ["gold"],
        {"x": 1},
    ]
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {"agent_id": draw(st.sampled_from([AGENT, "other"])), "flow_id": FLOW}
    for field in ("tier", "n", "flag"):
        if draw(st.booleans()):
            event[field] = draw(st.one_of(st.sampled_from(_FIELDS[field]), _VALUES))  # hits, and odd values
    geo = draw(st.sampled_from(["missing", "object", "scalar", "null"]))
    if geo == "object":
        event["geo"] = {"country": draw(st.one_of(st.sampled_from(["US", "FR", "1", Text("US")]), _VALUES))}
    elif geo == "scalar":
        event["geo"] = draw(st.sampled_from(["US", 7, ["US"]]))
    elif geo == "null":
        event["geo"] = None
    return event


def _scan(table: RuleTable, event: dict[str, Any]) -> object:
    """The first-match scan of the compiled matchers, rule by rule (what evaluate did before dispatch)."""
    for rule in table.query(RuleQuery(event["agent_id"], event["flow_id"])):
        try:
            if rule.match(event):
                return rule.id
        except Exception:
            return ("error", rule.id)
    return None


def _evaluated(table: RuleTable, event: dict[str, Any]) -> object:
    try:
        return table.evaluate(event).rule_id
    except RuleEvaluationError as exc:
        return ("error", exc.rule_id)


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return not isinstance(value, float) or math.isfinite(value)


def _reference(table: RuleTable, event: dict[str, Any]) -> object:
    bundle = table.bundle
    for rule in table.query(RuleQuery(event["agent_id"], event["flow_id"])):
        try:
            if reference_match(bundle.rules[rule.position].when, event):
                return rule.id
        except Mismatch:
            return ("error", rule.id)
    return None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=bundles(), event=events())
@example(table=None, event={"agent_id": AGENT, "flow_id": FLOW, "n": True})  # None: _numbers_table()
@example(table=None, event={"agent_id": AGENT, "flow_id": FLOW, "n": math.nan})
@example(table=None, event={"agent_id": AGENT, "flow_id": FLOW, "n": 1.0})
def test_dispatch_decides_as_the_scan_and_the_reference(table: RuleTable | None, event: dict[str, Any]) -> None:
    """The same rule matches (or the same rule fails) with dispatch, rule by rule, and per the spec."""
    if table is None:
        table = _numbers_table()
    assert _evaluated(table, event) == _scan(table, event)
    if _finite(event):  # the reference compares NaN and infinities; the compiler refuses them
        assert _evaluated(table, event) == _reference(table, event)


def _rule(i: int, when: dict[str, Any], priority: int = 0) -> dict[str, Any]:
    return {
        "id": f"r{i}",
        "priority": priority,
        "agents": [AGENT],
        "flows": [FLOW],
        "when": when,
        "then": {"decision": "deny"},
    }


def _table(rules: list[dict[str, Any]]) -> RuleTable:
    raw = {"bundle_id": "dispatch", "version": "1.0.0", "default": {"decision": "allow"}, "rules": rules}
    return RuleTable.from_bundle(parse_bundle(json.dumps(raw)))


def _numbers_table() -> RuleTable:
    return _table([_rule(i, {"field": "n", "op": "eq", "value": i}) for i in range(3 * MIN_RUN)])


def _steps(table: RuleTable) -> tuple[Any, ...]:
    return table._steps[AGENT][FLOW]  # the hot loop's cell (white box: is the run one step?)


def test_a_run_is_one_step_and_keeps_first_match_by_priority() -> None:
    """1,000 rules on `tier` become one lookup; of two rules holding a value, the first in order wins."""
    rules = [_rule(i, {"field": "tier", "op": "in", "value": [f"t{i}", "shared"]}) for i in range(1000)]
    rules.append(_rule(1000, {"field": "tier", "op": "eq", "value": "shared"}, priority=1))  # tried first
    table = _table(rules)
    assert len(_steps(table)) == 1
    assert table.evaluate({"agent_id": AGENT, "flow_id": FLOW, "tier": "shared"}).rule_id == "r1000"
    assert table.evaluate({"agent_id": AGENT, "flow_id": FLOW, "tier": "t999"}).rule_id == "r999"
    assert table.evaluate({"agent_id": AGENT, "flow_id": FLOW, "tier": "t1000"}).rule_id is None
    copy = table.restamped("v2")  # a restamped copy dispatches too, with its own decisions
    assert len(_steps(copy)) == 1
    hit = copy.evaluate({"agent_id": AGENT, "flow_id": FLOW, "tier": "t5"})
    assert (hit.rule_id, hit.version_id) == ("r5", "v2")


def test_interleaved_rules_split_runs_and_keep_their_places() -> None:
    """A rule on another field between two runs stays a step of its own, in its place."""
    rules = [_rule(i, {"field": "tier", "op": "eq", "value": f"t{i}"}) for i in range(MIN_RUN)]
    rules.append(_rule(50, {"field": "n", "op": "gt", "value": 0}))
    rules += [_rule(100 + i, {"field": "tier", "op": "eq", "value": "gold"}) for i in range(MIN_RUN)]
    table = _table(rules)
    assert len(_steps(table)) == 3
    event = {"agent_id": AGENT, "flow_id": FLOW, "tier": "gold", "n": 1}
    assert table.evaluate(event).rule_id == "r50"
    assert table.evaluate({**event, "n": 0}).rule_id == "r100"


def test_type_distinctions_are_the_compiled_matchers() -> None:
    """1 and 1.0 are one value; True against numbers and "1" fail as the rule itself fails; null is no match."""
    table = _numbers_table()
    base = {"agent_id": AGENT, "flow_id": FLOW}
    assert table.evaluate({**base, "n": 1}).rule_id == "r1"
    assert table.evaluate({**base, "n": 1.0}).rule_id == "r1"
    assert table.evaluate({**base, "n": -0.0}).rule_id == "r0"
    assert table.evaluate({**base, "n": None}).rule_id is None
    assert table.evaluate(base).rule_id is None
    for bad in (True, "1", math.nan, [1]):
        with pytest.raises(RuleEvaluationError) as raised:
            table.evaluate({**base, "n": bad})
        assert raised.value.rule_id == "r0"  # the first rule of the run, as the scan names it


def test_lookups_stay_linear_in_the_bundle_whatever_the_cells() -> None:
    """A long `everywhere` run merged with each flow's own rule differs per cell: the budget stops the copies."""
    import gc
    import tracemalloc

    values = [[f"v{i}-{k}" for k in range(50)] for i in range(100)]
    rules: list[dict[str, Any]] = [
        {"id": f"e{i}", "when": {"field": "tier", "op": "in", "value": v}, "then": {"decision": "deny"}}
        for i, v in enumerate(values)
    ]
    flows = [f"f{j}" for j in range(30)]
    rules += [
        {
            "id": f"p{j}",
            "priority": 1,
            "agents": [AGENT],
            "flows": [flow],
            "when": {"field": "tier", "op": "eq", "value": flow},
            "then": {"decision": "deny"},
        }
        for j, flow in enumerate(flows)
    ]
    text = json.dumps({"bundle_id": "wide", "version": "1.0.0", "default": {"decision": "allow"}, "rules": rules})
    first = RuleTable.from_bundle(parse_bundle(text))  # warm the shape cache
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bundle = parse_bundle(text)
    table = RuleTable.from_bundle(bundle, load=lambda: first.bundle)
    del bundle
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # 50 values a rule (their frozensets alone are ~3 KB a rule): ~6.6 KB a rule kept; without the
    # budget each of the 30 cells copies the 5,000-value lookup, ~31 KB a rule
    assert kept / len(table) < 10_000
    for flow in flows[:20]:  # and every cell still decides as the scan, dispatched or not
        for tier in (flow, "v3-4", "v99-49", "none"):
            event = {"agent_id": AGENT, "flow_id": flow, "tier": tier}
            assert _evaluated(table, event) == _scan(table, event)
