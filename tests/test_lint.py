"""lint: rules that can never decide, duplicates, unseen scopes, semantic diff; sound on random bundles."""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rule_engine import BundleValidationError, RuleTable, load_bundle, parse_bundle
from rule_engine.analysis.lint import lint, semantic_diff, unseen_scopes
from rule_engine.cli import cli

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
V1, V2 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2"))
RECORDED = ROOT / "tests" / "cases" / "events" / "gateway.jsonl"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", "memory://", *args])


def bundle_doc(rules: list[dict[str, Any]], default: str = "allow") -> dict[str, Any]:
    numbered = [{"id": f"r{i}", "then": {"decision": "d"}, **rule} for i, rule in enumerate(rules)]
    return {"bundle_id": "t", "version": "1", "default": {"decision": default}, "rules": numbered}


def table_of(rules: list[dict[str, Any]], default: str = "allow") -> RuleTable:
    return RuleTable.from_bundle(parse_bundle(json.dumps(bundle_doc(rules, default))))


def kinds(rules: list[dict[str, Any]]) -> dict[str, str]:
    return {f.rule_id: f.kind for f in lint(table_of(rules)).findings}


def leaf(field: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"field": field, "op": op} if op == "exists" else {"field": field, "op": op, "value": value}


@pytest.mark.parametrize("bundle", sorted(BUNDLES.glob("*.json")), ids=lambda p: p.stem)
def test_no_finding_on_the_example_bundles(bundle: Path) -> None:
    """No false positive: every example bundle lints clean, with and without the recorded events."""
    assert lint(RuleTable.from_bundle(load_bundle(bundle))).findings == []
    result = invoke("lint", str(bundle), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["findings"] == []


@pytest.mark.parametrize(
    ("when", "why"),
    [
        ({"all": [leaf("x", "eq", "a"), leaf("x", "eq", "b")]}, "eq a and eq b"),
        ({"all": [leaf("x", "in", ["a", "b"]), leaf("x", "in", ["c"])]}, "in with an empty intersection"),
        ({"all": [leaf("x", "eq", "a"), leaf("x", "not_in", ["a", "b"])]}, "eq a and not_in [a]"),
        ({"all": [leaf("x", "gt", 5), leaf("x", "lt", 3)]}, "empty range"),
        ({"all": [leaf("x", "gte", 5), leaf("x", "lt", 5)]}, "empty half-open range"),
        ({"all": [leaf("x", "eq", None), leaf("x", "gt", 1)]}, "null and a comparison"),
        ({"all": [leaf("x", "eq", 1), {"not": leaf("x", "in", [1, 2])}]}, "a leaf and a weaker negation"),
        ({"all": [leaf("y", "exists"), {"all": [leaf("x", "eq", 1), leaf("x", "eq", True)]}]}, "nested, kinds differ"),
        (
            {
                "any": [
                    {"all": [leaf("x", "eq", 1), leaf("x", "eq", 2)]},
                    {"all": [leaf("y", "lt", 1), leaf("y", "gt", 1)]},
                ]
            },
            "any of never",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_contradictory_conditions_never_match(when: dict[str, Any], why: str) -> None:
    """A rule whose condition cannot be true is an error finding (never_matches)."""
    assert kinds([{"when": when}]) == {"r0": "never_matches"}, why


@pytest.mark.parametrize(
    "when",
    [
        {"all": [leaf("x", "in", ["a", "b"]), leaf("x", "in", ["b", "c"])]},
        {"all": [leaf("x", "gte", 5), leaf("x", "lte", 5)]},
        {"all": [leaf("x", "eq", "a"), leaf("y", "eq", "b")]},
        {"all": [leaf("x", "eq", None), leaf("x", "exists")]},
        {"all": [leaf("x", "eq", 1), {"not": leaf("x", "eq", 2)}]},
        {"all": [leaf("x", "ne", "a"), leaf("x", "ne", "b")]},
        {"all": [leaf("x", "matches", "^a"), leaf("x", "starts_with", "b")]},  # unsatisfiable, but not proven: silent
    ],
)
def test_satisfiable_conditions_are_not_flagged(when: dict[str, Any]) -> None:
    """Near misses are silent: the reasoning only reports what it can prove."""
    assert kinds([{"when": when}]) == {}


def test_an_earlier_rule_that_always_matches_in_the_same_scope_shadows() -> None:
    """An earlier catch-all in a covering scope: the later rule never decides (shadowed, names the rule)."""
    rules = [
        {"priority": 10, "agents": ["a"], "then": {"decision": "stop"}},
        {"agents": ["a"], "flows": ["f", "g"], "when": leaf("x", "eq", 1)},
    ]
    findings = lint(table_of(rules)).findings
    assert [(f.rule_id, f.kind, f.by) for f in findings] == [("r1", "shadowed", ("r0",))]
    assert invoke_lint_exit(rules) == 1


def test_identical_and_weaker_earlier_conditions_shadow() -> None:
    """Same condition with another outcome, or a weaker earlier condition (gte 0.8 before gte 0.95)."""
    same = [
        {"when": leaf("x", "eq", 1), "then": {"decision": "a"}},
        {"when": leaf("x", "eq", 1), "then": {"decision": "b"}},
    ]
    assert kinds(same) == {"r1": "shadowed"}
    weaker = [
        {"priority": 2, "when": leaf("r", "gte", 0.8)},
        {"when": leaf("r", "gte", 0.95), "then": {"decision": "x"}},
    ]
    assert kinds(weaker) == {"r1": "shadowed"}
    stronger = [
        {"priority": 2, "when": leaf("r", "gte", 0.95)},
        {"when": leaf("r", "gte", 0.8), "then": {"decision": "x"}},
    ]
    assert kinds(stronger) == {}


def test_a_catch_all_in_an_overlapping_scope_shadows_only_part() -> None:
    """An earlier rule for agent a only: a rule for every agent is shadowed for a, not elsewhere."""
    rules = [{"priority": 1, "agents": ["a"]}, {"when": leaf("x", "eq", 1), "then": {"decision": "x"}}]
    (finding,) = lint(table_of(rules)).findings
    assert (finding.rule_id, finding.kind, finding.severity) == ("r1", "partly_shadowed", "info")
    assert finding.cells == (("a", "*"),)
    assert invoke_lint_exit(rules) == 0  # info findings do not fail


def test_an_earlier_rule_in_a_disjoint_scope_does_not_shadow() -> None:
    """Rules for different agents, or a later rule of higher priority, do not shadow each other."""
    assert kinds([{"agents": ["a"]}, {"agents": ["b"], "when": leaf("x", "eq", 1)}]) == {}
    assert kinds([{"priority": 0}, {"priority": 5, "when": leaf("x", "eq", 1)}]) == {}


def test_duplicate_rules_are_reported_once() -> None:
    """Same scope, condition and outcome: the later rule is a duplicate of the first."""
    rule = {"agents": ["a", "b"], "when": leaf("x", "in", [1, 2]), "then": {"decision": "deny", "reason": "r"}}
    reordered = {**rule, "agents": ["b", "a"]}
    findings = lint(table_of([rule, reordered])).findings
    assert [(f.rule_id, f.kind, f.by) for f in findings] == [("r1", "duplicate", ("r0",))]


def test_scopes_no_recorded_event_carries_are_reported_with_events(tmp_path: Path) -> None:
    """lint --events: agents and flows the events never carry (info)."""
    table = table_of([{"agents": ["api_gateway", "ghost"], "flows": ["login", "nowhere"], "when": leaf("x", "exists")}])
    found = unseen_scopes(table, ["api_gateway"], ["login"])
    assert [(f.kind, f.detail) for f in found] == [
        ("unseen_agent", "no recorded event has agent 'ghost'"),
        ("unseen_flow", "no recorded event has flow 'nowhere'"),
    ]
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle_doc([{"agents": ["partner_x"], "when": leaf("x", "exists")}])), encoding="utf-8")
    data = json.loads(invoke("lint", str(path), "--events", str(RECORDED), "--json").stdout)
    assert [f["kind"] for f in data["findings"]] == ["unseen_agent"]
    assert data["source"]["events"] == 36


def test_semantic_diff_of_the_gateway_bundles() -> None:
    """v1 -> v2: which decisions can change, per agent/flow; elsewhere only the bots' params change."""
    diff = semantic_diff(RuleTable.from_bundle(load_bundle(V2)), RuleTable.from_bundle(load_bundle(V1)))
    cells = {(c["agent"], c["flow"]): c for c in diff["cells"]}
    assert cells[("api_gateway", "login")]["can_change"] == [
        "allow -> challenge",
        "allow -> deny",
        "challenge -> deny",
        "throttle -> challenge",
        "throttle -> deny",
    ]
    assert cells[("api_gateway", "checkout")]["can_change"] == [
        "allow -> deny",
        "challenge -> deny",
        "throttle -> deny",
    ]
    assert cells[("api_gateway", "login")]["added"] == ["challenge-high-risk"]
    others = [c for k, c in cells.items() if k not in (("api_gateway", "login"), ("api_gateway", "checkout"))]
    assert others
    assert all(c["can_change"] == [] and c["details_may_change"] and c["changed"] == ["throttle-bots"] for c in others)
    assert diff["on_error"] == {"from": "error", "to": "allow"}
    assert semantic_diff(RuleTable.from_bundle(load_bundle(V1)), RuleTable.from_bundle(load_bundle(V1))) == {
        "cells": [],
        "on_error": None,
    }
    result = invoke("lint", V2, "--diff", V1)
    assert result.exit_code == 0
    assert "api_gateway / login: allow -> challenge, allow -> deny" in result.stdout


def invoke_lint_exit(rules: list[dict[str, Any]]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "b.json"
        path.write_text(json.dumps(bundle_doc(rules)), encoding="utf-8")
        result = invoke("lint", str(path))
    if result.exit_code == 1:
        assert result.stderr.startswith("error: ")
        assert len(result.stderr.splitlines()) == 1
    return result.exit_code


# --- soundness on random bundles ---------------------------------------------------------------------

# x is compared with numbers, y with strings, z with bools: events mostly carry those kinds, so most
# evaluations run to a decision instead of stopping at a type error.
NUMBERS, STRINGS = [1, 2, 3], ["a", "b"]
leaves = st.one_of(
    st.builds(leaf, st.just("x"), st.sampled_from(["eq", "ne", "lt", "lte", "gt", "gte"]), st.sampled_from(NUMBERS)),
    st.builds(leaf, st.just("x"), st.sampled_from(["in", "not_in"]), st.sampled_from([[1], [1, 2], [2, 3]])),
    st.builds(leaf, st.just("y"), st.sampled_from(["eq", "ne", "lt", "gte"]), st.sampled_from(STRINGS)),
    st.builds(leaf, st.just("y"), st.sampled_from(["in", "not_in"]), st.sampled_from([["a"], ["a", "b"]])),
    st.builds(leaf, st.just("z"), st.sampled_from(["eq", "ne"]), st.sampled_from([True, False, None])),
    st.builds(leaf, st.sampled_from("xyz"), st.just("exists")),
)
conditions = st.recursive(
    leaves,
    lambda c: (
        st.builds(lambda cs: {"all": cs}, st.lists(c, min_size=1, max_size=3))
        | st.builds(lambda cs: {"any": cs}, st.lists(c, min_size=1, max_size=3))
        | st.builds(lambda x: {"not": x}, c)
    ),
    max_leaves=4,
)
rules = st.fixed_dictionaries(
    {
        "priority": st.integers(0, 2),
        "then": st.builds(lambda d: {"decision": d}, st.sampled_from("pqr")),
        "when": st.one_of(conditions, conditions, conditions, st.none()),  # mostly with a condition
    },
    optional={
        "agents": st.lists(st.sampled_from(["a1", "a2"]), min_size=1, max_size=2),
        "flows": st.lists(st.sampled_from(["f1", "f2"]), min_size=1, max_size=2),
    },
).map(lambda rule: {k: v for k, v in rule.items() if v is not None})
bundles = st.lists(rules, min_size=2, max_size=6)
_MISSING = "missing"
# Every event of the small domain the random bundles read: the soundness checks below are exhaustive on it.
ALL_EVENTS = [
    {k: v for k, v in {"agent_id": a, "flow_id": f, "x": x, "y": y, "z": z}.items() if v != _MISSING}
    for a, f, x, y, z in itertools.product(
        ["a1", "a2", "a3"],
        ["f1", "f2", "f3"],
        [0, 1, 1.5, 2, 2.5, 3, 4, None, _MISSING, "a"],
        ["", "a", "ab", "b", "c", None, _MISSING, 1],
        [True, False, None, _MISSING],
    )
]


def _table(rule_list: list[dict[str, Any]]) -> RuleTable:
    try:
        return table_of(rule_list)
    except BundleValidationError:
        assume(False)
        raise


def _decide(table: RuleTable, event: dict[str, Any]) -> tuple[str | None, str] | None:
    try:
        d = table.evaluate(event)
    except Exception:
        return None
    return d.rule_id, d.decision


@settings(max_examples=150)
@given(bundles)
def test_a_rule_lint_says_never_decides_never_decides(rule_list: list[dict[str, Any]]) -> None:
    """Soundness: on every event of the domain, no flagged rule decides (partly shadowed: not in its cells)."""
    table = _table(rule_list)
    report = lint(table)
    never = {f.rule_id for f in report.findings if f.kind in ("never_matches", "shadowed", "duplicate")}
    partly = {f.rule_id: set(f.cells) for f in report.findings if f.kind == "partly_shadowed"}
    named_agents = {a for r in table.rules for a in r.rule.agents or ()}
    named_flows = {f for r in table.rules for f in r.rule.flows or ()}
    for event in ALL_EVENTS:
        decided = _decide(table, event)
        if decided is None or decided[0] is None:
            continue
        assert decided[0] not in never, (decided, event)
        cell = (
            event["agent_id"] if event["agent_id"] in named_agents else "*",
            event["flow_id"] if event["flow_id"] in named_flows else "*",
        )
        assert cell not in partly.get(decided[0], set()), (decided, event)


@settings(max_examples=150)
@given(bundles, bundles)
def test_every_real_change_is_one_the_semantic_diff_allows(
    old_rules: list[dict[str, Any]], new_rules: list[dict[str, Any]]
) -> None:
    """Soundness of lint --diff: each decision that really changes, on any event of the domain, is listed."""
    old, new = _table(old_rules), _table(new_rules)
    diff = semantic_diff(new, old)
    cells = {(c["agent"], c["flow"]): set(c["can_change"]) for c in diff["cells"]}
    named_agents = {a for t in (old, new) for r in t.rules for a in r.rule.agents or ()}
    named_flows = {f for t in (old, new) for r in t.rules for f in r.rule.flows or ()}
    for event in ALL_EVENTS:
        before, after = _decide(old, event), _decide(new, event)
        if before is None or after is None or before[1] == after[1]:
            continue
        cell = (
            event["agent_id"] if event["agent_id"] in named_agents else "*",
            event["flow_id"] if event["flow_id"] in named_flows else "*",
        )
        assert f"{before[1]} -> {after[1]}" in cells.get(cell, set()), (cell, before, after, event)


def test_the_work_budget_bounds_the_analysis_and_says_so() -> None:
    """Past its budget of implication checks, lint stops and reports complete: false."""
    rules = [{"when": leaf("x", "eq", i)} for i in range(1, 30)]
    assert lint(table_of(rules)).complete
    partial = lint(table_of(rules), budget=10)
    assert not partial.complete
    assert partial.findings == []
