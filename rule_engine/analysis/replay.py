"""Replay recorded events through two versions and report every decision that would change.

Both tables decide every event. A decision *changes* when the decision strings differ (an event a
table cannot evaluate gets that table's ``on_error`` decision, as a direct table user or a fully
promoted version would serve it). Changes are grouped by (agent, flow, from -> to) with the rules
that decided on each side and a few example events; evaluation errors are counted per side, and
those of one side only ("new" errors) separately. The candidate's :class:`~rule_engine.analysis.
check.TypeCheck` runs in the same pass, so events read from stdin are read once.

Bounds: at most ``max_groups`` change groups (further changes are counted in ``other_changed``), at
most ``max_examples`` (<= 20) example events per group and ``MAX_TOTAL_EXAMPLES`` (200) in all, so
the examples hold at most 200 events of at most one line each; error groups keep line numbers only.
Memory does not grow with the number of events otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from time import perf_counter_ns
from typing import Any

from rule_engine.analysis.check import TypeCheck, scope_label
from rule_engine.analysis.events import Recorded
from rule_engine.bundle.models import RuleBundle
from rule_engine.errors import RuleEngineError, RuleEvaluationError
from rule_engine.evaluation.table import Decision, RuleTable

__all__ = ["DEFAULT_EXAMPLES", "ChangeGroup", "ReplayGateRefused", "ReplayReport", "replay", "replay_gate"]

DEFAULT_EXAMPLES = 3
MAX_EXAMPLES = 20
MAX_TOTAL_EXAMPLES = 200
DEFAULT_MAX_GROUPS = 1000
DEFAULT = "(default)"
ERROR = "(error)"
_PROGRESS_EVERY = 8192


class ReplayGateRefused(RuleEngineError):
    """A replay gate found more changed decisions than allowed; nothing was staged."""

    def __init__(self, report: ReplayReport, max_changed_rate: float) -> None:
        self.report = report
        self.max_changed_rate = max_changed_rate
        super().__init__(
            f"replay: {report.changed} of {report.events} events ({report.changed_rate:.2%}) change decision, "
            f"over --max-changed-rate {max_changed_rate:g}; nothing was staged "
            f"(see 'rule-engine replay EVENTS --candidate BUNDLE')"
        )


@dataclass
class ChangeGroup:
    """Events of one agent and flow whose decision changes from one value to another."""

    agent: str
    flow: str
    before: str
    after: str
    count: int = 0
    from_rules: dict[str, int] = field(default_factory=dict)
    to_rules: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``from_rules`` / ``to_rules``: rule id -> events; ``(default)``, ``(error)``)."""
        return {
            "agent": self.agent,
            "flow": self.flow,
            "from": self.before,
            "to": self.after,
            "count": self.count,
            "from_rules": _ranked(self.from_rules),
            "to_rules": _ranked(self.to_rules),
            "examples": list(self.examples),
        }


@dataclass
class ErrorGroup:
    """Evaluation errors of one side, one agent/flow, one rule and field."""

    side: str
    agent: str
    flow: str
    rule_id: str
    field_name: str
    count: int = 0
    new: int = 0
    message: str = ""
    lines: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "side": self.side,
            "agent": self.agent,
            "flow": self.flow,
            "rule_id": self.rule_id,
            "field": self.field_name,
            "count": self.count,
            "new": self.new,
            "message": self.message,
            "example_lines": list(self.lines),
        }


@dataclass
class ReplayReport:
    """What replaying the events through both versions found."""

    candidate: str
    baseline: str
    events: int = 0
    changed: int = 0
    rule_changed: int = 0
    other_changed: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {"candidate": 0, "baseline": 0})
    new_errors: dict[str, int] = field(default_factory=lambda: {"candidate": 0, "baseline": 0})
    latency_ns: dict[str, int] = field(default_factory=lambda: {"candidate": 0, "baseline": 0})
    groups: dict[tuple[str, str, str, str], ChangeGroup] = field(default_factory=dict)
    error_groups: dict[tuple[str, str, str, str, str], ErrorGroup] = field(default_factory=dict)
    check: TypeCheck | None = None
    kept_examples: int = 0

    @property
    def changed_rate(self) -> float:
        """Changed decisions per event (0 when there were no events)."""
        return self.changed / self.events if self.events else 0.0

    @property
    def latency_ratio(self) -> float | None:
        """Candidate evaluation time over baseline evaluation time, summed over the events."""
        base = self.latency_ns["baseline"]
        return self.latency_ns["candidate"] / base if base else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``events``, ``changed``, ``changed_rate``, ``errors``, ``groups`` and more."""
        ratio = self.latency_ratio
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "events": self.events,
            "changed": self.changed,
            "changed_rate": round(self.changed_rate, 6),
            "errors": dict(self.errors),
            "new_errors": dict(self.new_errors),
            "same_decision_other_rule": self.rule_changed,
            "latency_ratio": round(ratio, 3) if ratio is not None else None,
            "groups": [g.as_dict() for g in self.sorted_groups()],
            "other_changed": self.other_changed,
            "error_groups": [g.as_dict() for g in sorted(self.error_groups.values(), key=lambda g: -g.count)],
            "check": {"findings": [f.as_dict() for f in self.check.findings()]} if self.check is not None else None,
        }

    def sorted_groups(self) -> list[ChangeGroup]:
        """The change groups, largest first."""
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.agent, g.flow, g.before, g.after))


def replay(
    candidate: RuleTable,
    baseline: RuleTable,
    events: Iterable[Recorded],
    *,
    examples: int = DEFAULT_EXAMPLES,
    max_groups: int = DEFAULT_MAX_GROUPS,
    check: bool = True,
    on_progress: Callable[[int], None] | None = None,
    names: tuple[str, str] = ("candidate", "baseline"),
) -> ReplayReport:
    """Decide every event on both tables and collect the differences (see the module docstring)."""
    examples = max(0, min(examples, MAX_EXAMPLES))
    report = ReplayReport(*names, check=TypeCheck(candidate) if check else None)
    check_add = report.check.adder() if report.check is not None else None
    cand_eval, base_eval = candidate.evaluate, baseline.evaluate
    cand_error = candidate.error_decision("replay").decision
    base_error = baseline.error_decision("replay").decision
    latency = report.latency_ns
    cand_ns = base_ns = 0
    count = changed = rule_changed = 0
    for recorded in events:
        event = recorded.event
        count += 1
        b_exc = c_exc = None
        t0 = perf_counter_ns()
        try:
            b: Decision | None = base_eval(event)
        except Exception as exc:
            b, b_exc = None, exc
        t1 = perf_counter_ns()
        try:
            c: Decision | None = cand_eval(event)
        except Exception as exc:
            c, c_exc = None, exc
        t2 = perf_counter_ns()
        base_ns += t1 - t0
        cand_ns += t2 - t1
        if check_add is not None:
            check_add(event, c_exc, recorded.line)
        if b is not None and c is not None:
            if b.decision == c.decision:
                if b.rule_id != c.rule_id:
                    rule_changed += 1
            else:
                changed += 1
                _change(report, recorded, b, c, b.decision, c.decision, examples, max_groups)
        else:
            _errors(report, recorded, b_exc, c_exc, examples)
            b_decision = b.decision if b is not None else base_error
            c_decision = c.decision if c is not None else cand_error
            if b_decision != c_decision:
                changed += 1
                _change(report, recorded, b, c, b_decision, c_decision, examples, max_groups)
        if on_progress is not None and count % _PROGRESS_EVERY == 0:
            on_progress(count)
    latency["baseline"], latency["candidate"] = base_ns, cand_ns
    report.events, report.changed, report.rule_changed = count, changed, rule_changed
    return report


def _label(decision: Decision | None) -> str:
    if decision is None:
        return ERROR
    return decision.rule_id if decision.rule_id is not None else DEFAULT


def _change(
    report: ReplayReport,
    recorded: Recorded,
    b: Decision | None,
    c: Decision | None,
    before: str,
    after: str,
    examples: int,
    max_groups: int,
) -> None:
    event = recorded.event
    key = (scope_label(event.get("agent_id")), scope_label(event.get("flow_id")), before, after)
    group = report.groups.get(key)
    if group is None:
        if len(report.groups) >= max_groups:
            report.other_changed += 1
            return
        group = report.groups[key] = ChangeGroup(*key)
    group.count += 1
    b_rule, c_rule = _label(b), _label(c)
    group.from_rules[b_rule] = group.from_rules.get(b_rule, 0) + 1
    group.to_rules[c_rule] = group.to_rules.get(c_rule, 0) + 1
    if len(group.examples) < examples and report.kept_examples < MAX_TOTAL_EXAMPLES:
        report.kept_examples += 1
        group.examples.append(
            {"line": recorded.line, "key": recorded.key, "event": event, "from_rule": b_rule, "to_rule": c_rule}
        )


def _errors(
    report: ReplayReport,
    recorded: Recorded,
    b_exc: BaseException | None,
    c_exc: BaseException | None,
    examples: int,
) -> None:
    event = recorded.event
    agent, flow = event.get("agent_id"), event.get("flow_id")
    if type(agent) is not str or type(flow) is not str:
        agent, flow = scope_label(agent), scope_label(flow)
    if b_exc is not None:
        _error(report, "baseline", b_exc, c_exc is None, agent, flow, recorded.line, examples)
    if c_exc is not None:
        _error(report, "candidate", c_exc, b_exc is None, agent, flow, recorded.line, examples)


def _error(
    report: ReplayReport, side: str, exc: BaseException, new: bool, agent: str, flow: str, line: int, examples: int
) -> None:
    report.errors[side] += 1
    if new:
        report.new_errors[side] += 1
    if isinstance(exc, RuleEvaluationError):
        key = (side, agent, flow, exc.rule_id, exc.field)
    else:
        key = (side, agent, flow, "?", "?")
    group = report.error_groups.get(key)
    if group is None:
        if len(report.error_groups) >= DEFAULT_MAX_GROUPS:
            return
        group = report.error_groups[key] = ErrorGroup(*key, message=str(exc))
    group.count += 1
    group.new += new
    if len(group.lines) < examples:
        group.lines.append(line)


def _ranked(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def replay_gate(
    candidate: RuleBundle | RuleTable,
    baseline: RuleBundle | RuleTable | None,
    events: Iterable[Recorded],
    max_changed_rate: float,
) -> ReplayReport | None:
    """The deploy gate: replay ``events``; raise :class:`ReplayGateRefused` over ``max_changed_rate``.

    Call it before anything is staged. ``baseline`` is the active version's bundle (None when no
    version is active yet: nothing to compare with, the gate passes and returns None).
    """
    if baseline is None:
        return None
    cand = candidate if isinstance(candidate, RuleTable) else RuleTable.from_bundle(candidate)
    base = baseline if isinstance(baseline, RuleTable) else RuleTable.from_bundle(baseline)
    report = replay(cand, base, events, examples=1, check=False)
    if report.changed_rate > max_changed_rate:
        raise ReplayGateRefused(report, max_changed_rate)
    return report
