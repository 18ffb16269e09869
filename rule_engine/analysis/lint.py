"""Lint a bundle: rules that can never decide, duplicates, unseen scopes, and a semantic diff.

Findings (each with ``rule_id``, ``kind``, ``severity``, ``detail``):

- ``never_matches`` (error): the condition is contradictory (``x eq "a"`` and ``x eq "b"`` under
  ``all``, ``in`` lists with an empty intersection, an empty range, a leaf with its own negation...);
- ``duplicate`` (warning): an earlier rule has the same scope, condition and outcome;
- ``shadowed`` (warning): in every agent/flow cell the rule applies to, an earlier rule matches
  whenever it would (it always matches, or has the same or a weaker condition);
- ``partly_shadowed`` (info): the same, in some of its cells only (the cells are listed);
- ``unseen_agent`` / ``unseen_flow`` (info, with recorded events): the rule names an agent or flow no
  event carries.

The reasoning (:mod:`rule_engine.analysis.logic`) is conservative: a finding is a proof, so a rule
that could decide is never flagged. Cells are the agents and flows the bundle names plus "any
other" (``*``), exactly the table's index. Work is bounded by ``budget`` implication checks; past it
the remaining rules are reported as not analysed (``complete: false``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rule_engine.analysis.logic import canonical, implies, never
from rule_engine.evaluation.table import CompiledRule, RuleQuery, RuleTable

__all__ = ["DEFAULT_BUDGET", "LintFinding", "LintReport", "cells_of", "lint", "semantic_diff", "unseen_scopes"]

DEFAULT_BUDGET = 2_000_000
MAX_LISTED_CELLS = 20
ANY = "*"
SEVERITY = {
    "never_matches": "error",
    "duplicate": "warning",
    "shadowed": "warning",
    "partly_shadowed": "info",
    "unseen_agent": "info",
    "unseen_flow": "info",
}


@dataclass(frozen=True)
class LintFinding:
    """One lint finding."""

    rule_id: str
    kind: str
    detail: str
    by: tuple[str, ...] = ()
    cells: tuple[tuple[str, str], ...] = ()

    @property
    def severity(self) -> str:
        """error, warning or info."""
        return SEVERITY[self.kind]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "rule_id": self.rule_id,
            "kind": self.kind,
            "severity": self.severity,
            "detail": self.detail,
            "by": list(self.by),
            "cells": [{"agent": a, "flow": f} for a, f in self.cells],
        }


@dataclass
class LintReport:
    """Every finding, and whether the analysis finished within its budget."""

    findings: list[LintFinding]
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"complete": self.complete, "findings": [f.as_dict() for f in self.findings]}


def _name(value: str | None) -> str:
    return ANY if value is None else value


def cells_of(*tables: RuleTable) -> list[tuple[str | None, str | None]]:
    """Every index cell of the tables: named agents and flows plus None ("any other")."""
    agents: dict[str | None, None] = {}
    flows: dict[str | None, None] = {}
    for table in tables:
        for rule in table.rules:
            agents.update(dict.fromkeys(rule.rule.agents or ()))
            flows.update(dict.fromkeys(rule.rule.flows or ()))
    agents[None] = None
    flows[None] = None
    return [(a, f) for a in agents for f in flows]


def _applies(rule: CompiledRule, agent: str | None, flow: str | None) -> bool:
    agents, flows = rule.rule.agents, rule.rule.flows
    return (agents is None or (agent is not None and agent in agents)) and (
        flows is None or (flow is not None and flow in flows)
    )


def _outcome(rule: CompiledRule) -> str:
    return canonical(rule.rule.then)


def lint(table: RuleTable, *, budget: int = DEFAULT_BUDGET) -> LintReport:
    """Lint a compiled table (see the module docstring)."""
    findings: list[LintFinding] = []
    contradictory = {r.id for r in table.rules if never(r.rule.when)}
    for rule in table.rules:
        if rule.id in contradictory:
            findings.append(
                LintFinding(rule.id, "never_matches", "its condition can never be true: the rule never decides")
            )
    cells = cells_of(table)
    own_cells: dict[str, list[tuple[str | None, str | None]]] = {r.id: [] for r in table.rules}
    earlier: dict[tuple[str, tuple[str | None, str | None]], tuple[CompiledRule, ...]] = {}
    for cell in cells:
        ordered = table.query(RuleQuery(*cell))
        for position, rule in enumerate(ordered):
            if _applies(rule, *cell):
                own_cells[rule.id].append(cell)
                earlier[(rule.id, cell)] = ordered[:position]
    spent = 0
    complete = True
    first_seen: dict[tuple[Any, ...], CompiledRule] = {}
    for rule in table.rules:
        if rule.id in contradictory:
            continue
        signature = (
            frozenset(rule.rule.agents) if rule.rule.agents else None,
            frozenset(rule.rule.flows) if rule.rule.flows else None,
            canonical(rule.rule.when),
            _outcome(rule),
        )
        twin = first_seen.setdefault(signature, rule)
        if twin is not rule:
            findings.append(
                LintFinding(rule.id, "duplicate", f"same scope, condition and outcome as {twin.id!r}", by=(twin.id,))
            )
            continue
        if not complete:
            continue
        blocked: list[tuple[str | None, str | None]] = []
        by: dict[str, None] = {}
        for cell in own_cells[rule.id]:
            for before in earlier[(rule.id, cell)]:
                if before.id in contradictory:
                    continue
                spent += 1
                if implies(rule.rule.when, before.rule.when):
                    blocked.append(cell)
                    by[before.id] = None
                    break
            if spent > budget:
                complete = False
                break
        if not blocked or not complete:
            continue
        listed = tuple((_name(a), _name(f)) for a, f in blocked[:MAX_LISTED_CELLS])
        if len(blocked) == len(own_cells[rule.id]):
            findings.append(
                LintFinding(
                    rule.id,
                    "shadowed",
                    f"never decides: {', '.join(repr(b) for b in by)} (tried first) matches whenever it would",
                    by=tuple(by),
                    cells=listed,
                )
            )
        else:
            findings.append(
                LintFinding(
                    rule.id,
                    "partly_shadowed",
                    f"never decides for {len(blocked)} of its {len(own_cells[rule.id])} agent/flow cells "
                    f"({', '.join(repr(b) for b in by)} matches first there)",
                    by=tuple(by),
                    cells=listed,
                )
            )
    return LintReport(findings, complete)


def unseen_scopes(table: RuleTable, agents: Iterable[Any], flows: Iterable[Any]) -> list[LintFinding]:
    """Rules naming agents or flows that no recorded event carries."""
    seen_agents, seen_flows = set(agents), set(flows)
    found: list[LintFinding] = []
    for rule in table.rules:
        for kind, names, seen in (
            ("unseen_agent", rule.rule.agents, seen_agents),
            ("unseen_flow", rule.rule.flows, seen_flows),
        ):
            missing = [n for n in names or () if n not in seen]
            if missing:
                what = "agent" if kind == "unseen_agent" else "flow"
                found.append(
                    LintFinding(rule.id, kind, f"no recorded event has {what} {', '.join(repr(m) for m in missing)}")
                )
    return found


# --- semantic diff ------------------------------------------------------------------------------------


def _deciders(
    old: tuple[CompiledRule, ...], new: tuple[CompiledRule, ...], index: int | None
) -> list[CompiledRule | None]:
    """The new rules (None: the default) that may decide an event decided in ``old`` by ``old[index]``.

    ``index`` None: events no old rule matches. A new rule is excluded when its condition implies an
    old rule's that was tried before (and so did not match); the candidates stop at the first new rule
    whose condition the old decider's implies (it matches too).
    """
    failed = old if index is None else old[:index]
    decider = None if index is None else old[index]
    found: list[CompiledRule | None] = []
    for rule in new:
        if any(implies(rule.rule.when, f.rule.when) for f in failed):
            continue
        found.append(rule)
        if decider is not None and implies(decider.rule.when, rule.rule.when):
            return found
    found.append(None)
    return found


def semantic_diff(new: RuleTable, old: RuleTable) -> dict[str, Any]:
    """Per agent/flow cell, which decisions can change from ``old`` to ``new`` (assuming no errors).

    Sound: a change not listed cannot happen on an event both versions evaluate without error.
    """
    new_default, old_default = new.default_decision.decision, old.default_decision.decision
    error_from, error_to = old.error_decision("").decision, new.error_decision("").decision
    cells: list[dict[str, Any]] = []
    for agent, flow in cells_of(new, old):
        before = old.query(RuleQuery(agent, flow))
        after = new.query(RuleQuery(agent, flow))
        same = [(canonical(r.rule.when), _outcome(r)) for r in before] == [
            (canonical(r.rule.when), _outcome(r)) for r in after
        ]
        if same and canonical(new.bundle.default_outcome) == canonical(old.bundle.default_outcome):
            continue
        pairs: dict[str, None] = {}
        details = False
        old_outcome, new_outcome = canonical(old.bundle.default_outcome), canonical(new.bundle.default_outcome)
        for index in [*range(len(before)), None]:
            from_decision = old_default if index is None else before[index].decision.decision
            from_outcome = old_outcome if index is None else _outcome(before[index])
            for rule in _deciders(before, after, index):
                to_decision = new_default if rule is None else rule.decision.decision
                if from_decision != to_decision:
                    pairs[f"{from_decision} -> {to_decision}"] = None
                elif from_outcome != (new_outcome if rule is None else _outcome(rule)):
                    details = True
        old_ids = {r.id: r for r in before}
        new_ids = {r.id: r for r in after}
        cells.append(
            {
                "agent": _name(agent),
                "flow": _name(flow),
                "can_change": sorted(pairs),
                "added": [r for r in new_ids if r not in old_ids],
                "removed": [r for r in old_ids if r not in new_ids],
                "changed": [
                    r
                    for r in new_ids
                    if r in old_ids
                    and (canonical(new_ids[r].rule.when), _outcome(new_ids[r]))
                    != (canonical(old_ids[r].rule.when), _outcome(old_ids[r]))
                ],
                "details_may_change": details and not pairs,
            }
        )
    return {"cells": cells, "on_error": {"from": error_from, "to": error_to} if error_from != error_to else None}
