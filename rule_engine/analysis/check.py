"""Types against real traffic: what each rule's comparisons need, against what recorded events carry.

:class:`TypeCheck` is fed events one at a time (so ``replay`` can run it in its own pass over the
events, which may come from stdin and cannot be read twice) and reports :class:`Finding` s:

- ``raises``: the table raised :class:`~rule_engine.RuleEvaluationError` on recorded events (those
  events got the ``on_error`` decision); the command exits 1;
- ``type_mismatch``: events in the rule's scope carry the field with a kind the comparison does not
  accept (it raises whenever it is reached; an earlier rule or a short-circuit may keep it from being
  reached), with the share per agent and flow;
- ``never_carried``: no event in the rule's scope carries the field (the leaf is always false);
- ``no_traffic``: no recorded event falls in the rule's scope.

:func:`compatibility` compares two versions: fields the new one reads that the old did not, fields it
stops reading, and fields whose comparisons need another kind.

Bounds: per finding at most ``MAX_SCOPES`` agent/flow pairs are itemised (the rest are summed under
``(other)``); the per-cell cache of comparisons holds at most ``MAX_CELLS`` entries; at most
``MAX_COMBOS`` distinct (cell, kinds seen) combinations are counted before they are folded into the
per-comparison tallies. Per event the cost is one lookup per distinct field path of its cell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rule_engine.analysis.fields import FieldUse, Observer, compile_observer, field_uses, kind_of_type
from rule_engine.errors import RuleEvaluationError
from rule_engine.evaluation.table import RuleQuery, RuleTable

__all__ = [
    "MAX_CELLS",
    "MAX_COMBOS",
    "MAX_SCOPES",
    "Finding",
    "TypeCheck",
    "check_events",
    "compatibility",
    "scope_label",
]

MAX_SCOPES = 200
MAX_CELLS = 10_000
MAX_COMBOS = 100_000
_OTHER = ("(other)", "(other)")
SEVERITY = {"raises": "error", "type_mismatch": "warning", "never_carried": "warning", "no_traffic": "info"}


def scope_label(value: Any) -> str:
    """How an agent_id / flow_id shows in a report: the string itself, ``(none)``, or a clipped repr."""
    if isinstance(value, str):
        return value
    if value is None:
        return "(none)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class _Tally:
    """Counts of one comparison (or one raising rule/field) over events, itemised by agent and flow."""

    events: int = 0
    hits: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    scopes: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (agent, flow) -> [events, hits]
    example: str | None = None
    example_line: int | None = None

    def cell(self, agent: str, flow: str) -> list[int]:
        slot = self.scopes.get((agent, flow))
        if slot is None:
            if len(self.scopes) >= MAX_SCOPES and _OTHER in self.scopes:
                return self.scopes[_OTHER]
            key = _OTHER if len(self.scopes) >= MAX_SCOPES else (agent, flow)
            slot = self.scopes.setdefault(key, [0, 0])
        return slot


@dataclass(frozen=True)
class Finding:
    """One problem found: which rule and field, what kind of problem, and on what share of events."""

    rule_id: str
    field: str | None
    kind: str
    share: float
    count: int
    events: int
    detail: str
    needs: tuple[str, ...] | None = None
    seen: Mapping[str, int] | None = None
    by_scope: tuple[Mapping[str, Any], ...] = ()
    example_line: int | None = None

    @property
    def severity(self) -> str:
        """error (``raises``), warning or info."""
        return SEVERITY[self.kind]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "rule_id": self.rule_id,
            "field": self.field,
            "kind": self.kind,
            "severity": self.severity,
            "share": self.share,
            "count": self.count,
            "events": self.events,
            "detail": self.detail,
            "needs": list(self.needs) if self.needs is not None else None,
            "seen": dict(self.seen) if self.seen is not None else None,
            "by_scope": [dict(s) for s in self.by_scope],
            "example_line": self.example_line,
        }


@dataclass(frozen=True, eq=False)
class _Cell:
    """One agent/flow cell: its rules, the distinct paths they read, and (comparison, path position)."""

    rule_ids: tuple[str, ...]
    observe: Observer
    where: tuple[tuple[int, int], ...]


class TypeCheck:
    """Accumulates, event by event, what a table's comparisons meet in recorded traffic."""

    def __init__(self, table: RuleTable) -> None:
        self.table = table
        uses = field_uses(table)
        seen: dict[tuple[str, str, frozenset[str] | None], int] = {}
        self._uses: list[FieldUse] = []
        for use in uses:  # one comparison per (rule, field, needed kinds)
            key = (use.rule_id, use.field, use.needs)
            if key not in seen:
                seen[key] = len(self._uses)
                self._uses.append(use)
        self._by_rule: dict[str, list[int]] = {}
        for index, use in enumerate(self._uses):
            self._by_rule.setdefault(use.rule_id, []).append(index)
        self._tallies = [_Tally() for _ in self._uses]
        self._rule_events: dict[str, int] = dict.fromkeys((r.id for r in table.rules), 0)
        self._raised: dict[tuple[str, str], _Tally] = {}
        self._pending_errors: dict[tuple[str, str, tuple[str, str]], int] = {}
        self._cells: dict[tuple[Any, Any], _Cell] = {}
        # (cell, scope labels, types seen at the cell's paths) -> [events, first line]: the per-event
        # work is one lookup per distinct path; the tallies are updated per distinct combination.
        self._combos: dict[tuple[Any, ...], list[Any]] = {}
        self._counted = [0]
        self._add = self.adder()

    def _cell(self, agent: Any, flow: Any) -> _Cell:
        """The cell of an agent and flow; cached under the names when both are strings."""
        strings = type(agent) is str and type(flow) is str
        key = (agent if isinstance(agent, str) else None, flow if isinstance(flow, str) else None)
        cached = self._cells.get(key)
        if cached is None:
            rule_ids = tuple(r.id for r in self.table.query(RuleQuery(*key)))
            uses = [i for rid in rule_ids for i in self._by_rule.get(rid, ())]
            paths = tuple(dict.fromkeys(self._uses[i].path for i in uses))
            where = tuple((i, paths.index(self._uses[i].path)) for i in uses)
            if len(self._cells) >= MAX_CELLS:
                self._cells.clear()
            cached = self._cells[key] = _Cell(rule_ids, compile_observer(paths), where)
        if strings and len(self._cells) < MAX_CELLS:
            self._cells[(agent, flow)] = cached
        return cached

    def add(self, event: Mapping[str, Any], error: BaseException | None = None, line: int | None = None) -> None:
        """Count one event, and the error the table raised on it (None when it decided)."""
        self._add(event, error, line)

    def adder(self) -> Callable[[Mapping[str, Any], BaseException | None, int | None], None]:
        """:meth:`add` as a closure over its state (what ``replay`` calls per event)."""
        cells, combos, cell_of, count_error = self._cells, self._combos, self._cell, self._count_error
        counted = self._counted

        def add(event: Mapping[str, Any], error: BaseException | None = None, line: int | None = None) -> None:
            agent, flow = event.get("agent_id"), event.get("flow_id")
            if type(agent) is str and type(flow) is str:
                labels: tuple[str, str] = (agent, flow)
                cell = cells.get(labels) or cell_of(agent, flow)
            else:
                labels = (scope_label(agent), scope_label(flow))
                cell = cell_of(agent, flow)
            key = (cell, labels, cell.observe(event))
            combo = combos.get(key)
            if combo is None:
                if len(combos) >= MAX_COMBOS:
                    self._expand()
                combos[key] = [1, line]
            else:
                combo[0] += 1
            counted[0] += 1
            if error is not None:
                count_error(error, labels, line)

        return add

    @property
    def events(self) -> int:
        """Events counted so far."""
        return self._counted[0]

    def _count_error(self, error: BaseException, labels: tuple[str, str], line: int | None) -> None:
        key = (getattr(error, "rule_id", "?"), getattr(error, "field", "?"), labels)
        count = self._pending_errors.get(key)
        if count is None:
            if (key[0], key[1]) not in self._raised:
                self._raised[(key[0], key[1])] = _Tally(example=str(error), example_line=line)
            if len(self._pending_errors) >= MAX_COMBOS:
                self._expand()
            self._pending_errors[key] = 1
        else:
            self._pending_errors[key] = count + 1

    def _expand(self) -> None:
        """Fold the counted combinations (and errors) into the per-comparison tallies."""
        for (rule_id, field_name, labels), count in self._pending_errors.items():
            raised = self._raised[(rule_id, field_name)]
            raised.hits += count
            raised.cell(*labels)[1] += count
        self._pending_errors.clear()
        tallies, uses, rule_events = self._tallies, self._uses, self._rule_events
        for (cell, labels, types), (count, line) in self._combos.items():
            kinds = [kind_of_type(t) for t in types]
            for rid in cell.rule_ids:
                rule_events[rid] += count
            for index, position in cell.where:
                tally = tallies[index]
                tally.events += count
                slot = tally.cell(*labels)
                slot[0] += count
                kind = kinds[position]
                if kind is None:
                    continue
                tally.kinds[kind] = tally.kinds.get(kind, 0) + count
                if not uses[index].accepts(kind):
                    tally.hits += count
                    slot[1] += count
                    if line is not None and (tally.example_line is None or line < tally.example_line):
                        tally.example_line = line
        self._combos.clear()

    def findings(self) -> list[Finding]:
        """Every finding, errors first, then by rule order."""
        self._expand()
        found: list[Finding] = []
        order = {r.id: i for i, r in enumerate(self.table.rules)}
        for (rule_id, field_name), tally in self._raised.items():
            in_scope = self._rule_events.get(rule_id, 0) or self.events
            found.append(
                Finding(
                    rule_id,
                    field_name,
                    "raises",
                    _share(tally.hits, in_scope),
                    tally.hits,
                    in_scope,
                    f"raised on {tally.hits} of {in_scope} events in scope: {tally.example}",
                    by_scope=self._raised_scopes(rule_id, tally),
                    example_line=tally.example_line,
                )
            )
        for rule in self.table.rules:
            if rule.rule.when is not None and self._rule_events[rule.id] == 0:
                found.append(
                    Finding(rule.id, None, "no_traffic", 0.0, 0, 0, "no recorded event is in the rule's scope")
                )
        for use, tally in zip(self._uses, self._tallies, strict=True):
            if tally.events == 0:
                continue
            needs = tuple(sorted(use.needs)) if use.needs is not None else None
            if tally.hits:
                wrong = {k: n for k, n in tally.kinds.items() if not use.accepts(k)}
                found.append(
                    Finding(
                        use.rule_id,
                        use.field,
                        "type_mismatch",
                        _share(tally.hits, tally.events),
                        tally.hits,
                        tally.events,
                        f"{use.op!r} needs {' or '.join(needs or ())}; {tally.hits} of {tally.events} events in scope "
                        f"carry {', '.join(sorted(wrong))}",
                        needs=needs,
                        seen=dict(sorted(tally.kinds.items())),
                        by_scope=_scopes(tally),
                        example_line=tally.example_line,
                    )
                )
            elif not tally.kinds and use.needs is not None:
                found.append(
                    Finding(
                        use.rule_id,
                        use.field,
                        "never_carried",
                        1.0,
                        tally.events,
                        tally.events,
                        f"none of the {tally.events} events in scope carries it: the comparison is always false",
                        needs=needs,
                        seen={},
                    )
                )
        rank = {"raises": 0, "type_mismatch": 1, "never_carried": 2, "no_traffic": 3}
        found.sort(key=lambda f: (rank[f.kind], order.get(f.rule_id, len(order))))
        return found

    def _raised_scopes(self, rule_id: str, raised: _Tally) -> tuple[Mapping[str, Any], ...]:
        # events in scope per cell come from the rule's first comparison tally (same cells)
        first = self._by_rule.get(rule_id)
        totals = self._tallies[first[0]].scopes if first else {}
        rows = []
        for (agent, flow), (_, hits) in raised.scopes.items():
            events = totals.get((agent, flow), [hits, 0])[0] or hits
            rows.append({"agent": agent, "flow": flow, "events": events, "count": hits, "share": _share(hits, events)})
        return tuple(sorted(rows, key=lambda r: (-r["count"], r["agent"], r["flow"])))


def _scopes(tally: _Tally) -> tuple[Mapping[str, Any], ...]:
    rows = [
        {"agent": agent, "flow": flow, "events": events, "count": hits, "share": _share(hits, events)}
        for (agent, flow), (events, hits) in tally.scopes.items()
        if hits
    ]
    return tuple(sorted(rows, key=lambda r: (-r["count"], r["agent"], r["flow"])))


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def check_events(table: RuleTable, events: Any) -> TypeCheck:
    """Run a :class:`TypeCheck` of ``table`` over recorded events (an iterable of ``Recorded``)."""
    check = TypeCheck(table)
    evaluate = table.evaluate
    for recorded in events:
        error: BaseException | None = None
        try:
            evaluate(recorded.event)
        except RuleEvaluationError as exc:
            error = exc
        check.add(recorded.event, error, recorded.line)
    return check


def _kinds_by_field(table: RuleTable) -> dict[str, tuple[set[str], list[str]]]:
    result: dict[str, tuple[set[str], list[str]]] = {}
    for use in field_uses(table):
        kinds, rules = result.setdefault(use.field, (set(), []))
        kinds.update(use.needs if use.needs is not None else {"any"})
        if use.rule_id not in rules:
            rules.append(use.rule_id)
    return result


def compatibility(new: RuleTable, old: RuleTable) -> dict[str, Any]:
    """Fields ``new`` reads that ``old`` did not, fields it stops reading, and changed needed kinds."""
    after, before = _kinds_by_field(new), _kinds_by_field(old)
    return {
        "added_fields": [
            {"field": name, "needs": sorted(kinds), "rule_ids": rules}
            for name, (kinds, rules) in after.items()
            if name not in before
        ],
        "removed_fields": [
            {"field": name, "needs": sorted(kinds), "rule_ids": rules}
            for name, (kinds, rules) in before.items()
            if name not in after
        ],
        "changed_types": [
            {"field": name, "before": sorted(before[name][0]), "after": sorted(kinds), "rule_ids": rules}
            for name, (kinds, rules) in after.items()
            if name in before and before[name][0] != kinds
        ],
    }
