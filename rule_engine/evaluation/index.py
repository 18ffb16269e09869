"""The (agent, flow) index of a rule table, with wildcards kept as wildcards.

A rule applies to an event when it names no agents or the event's ``agent_id``, and no flows or
the event's ``flow_id``. Every rule is filed once under what it names:

* ``pairs[agent][flow]``: rules naming both agents and flows, when the rule names at most
  :data:`PAIR_LIMIT` (agent, flow) pairs;
* ``agents[agent]``: rules naming agents and no flows, and the *wide* rules naming more than
  ``PAIR_LIMIT`` pairs, filed under each agent with their flows as a filter;
* ``flows[flow]``: rules naming flows and no agents;
* ``everywhere``: rules naming neither.

So the scopes take memory linear in the bundle (at most ``PAIR_LIMIT`` entries per rule), never
the product of the agents and flows of different rules (D18: a rule naming N agents and another
naming N flows once built N x N cells).

For speed the table also keeps *cells*, the merged rule list of one (agent, flow), built at
prepare time for the rows (agents) that fit a budget linear in the bundle
(:func:`cell_budget`); a row that does not fit, or holds a wide rule, is a :class:`LazyRow` that
merges the scopes when queried (a k-way merge by rank, stopping where the evaluation stops).
Either way the rules come in the same order: priority high to low, then file order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, Generic, TypeVar

__all__ = ["ANY", "PAIR_LIMIT", "LazyRow", "Scopes", "build_rows", "cell_budget"]

_T = TypeVar("_T")
ANY = None  # the row / cell key of "an agent (a flow) that no rule names"

#: A rule naming at most this many (agent, flow) pairs is indexed by pair; a wider one by agent,
#: with its flows as a filter.
PAIR_LIMIT = 64
_SMALL = 256  # lazy cells of at most this many candidate rules are sorted at once, not merged


def cell_budget(scope_entries: int) -> int:
    """The most rule entries the prebuilt cells may hold: linear in the bundle's scope entries."""
    return max(1 << 14, 8 * scope_entries)


class Scopes:
    """Every rule filed once under what it names (by rank: its position in the global order)."""

    __slots__ = ("agents", "entries", "everywhere", "filters", "flows", "pairs", "wide_agents")

    def __init__(self, scopes: Sequence[tuple[tuple[str, ...] | None, tuple[str, ...] | None]]) -> None:
        """Index rules given, in rank order, as (agents, flows) with None for "every"."""
        pairs: dict[str, dict[str, list[int]]] = {}
        agents: dict[str, list[int]] = {}
        flows: dict[str, list[int]] = {}
        everywhere: list[int] = []
        filters: dict[int, frozenset[str]] = {}
        entries = 0
        for rank, (rule_agents, rule_flows) in enumerate(scopes):
            named_agents = tuple(dict.fromkeys(rule_agents)) if rule_agents is not None else None
            named_flows = tuple(dict.fromkeys(rule_flows)) if rule_flows is not None else None
            entries += 1 + len(named_agents or ()) + len(named_flows or ())
            if named_agents is None and named_flows is None:
                everywhere.append(rank)
            elif named_agents is None:
                for flow in named_flows or ():
                    flows.setdefault(flow, []).append(rank)
            elif named_flows is None or len(named_agents) * len(named_flows) > PAIR_LIMIT:
                if named_flows is not None:
                    filters[rank] = frozenset(named_flows)
                for agent in named_agents:
                    agents.setdefault(agent, []).append(rank)
            else:
                for agent in named_agents:
                    row = pairs.setdefault(agent, {})
                    for flow in named_flows:
                        row.setdefault(flow, []).append(rank)
        self.pairs = {a: {f: tuple(r) for f, r in row.items()} for a, row in pairs.items()}
        self.agents = {a: tuple(r) for a, r in agents.items()}
        self.flows = {f: tuple(r) for f, r in flows.items()}
        self.everywhere = tuple(everywhere)
        self.filters = filters
        self.wide_agents = frozenset(a for a, ranks in self.agents.items() if any(r in filters for r in ranks))
        self.entries = entries

    def ranks(self, agent: Any, flow: Any) -> Iterator[int]:
        """The ranks of the rules applying to ``agent`` and ``flow``, in order.

        Every dictionary lookup happens here, before the first rank is produced, so an unhashable
        agent or flow raises ``TypeError`` from this call (the table treats it as the wildcard).
        """
        row = self.pairs.get(agent)
        pair = row.get(flow, ()) if row is not None else ()
        own: tuple[int, ...] = self.agents.get(agent, ())
        by_flow = self.flows.get(flow, ())
        if agent in self.wide_agents:  # some of its rules name many flows: filter them lazily
            lazy: list[Iterable[int]] = [g for g in (pair, by_flow, self.everywhere) if g]
            lazy.append(self._filtered(own, flow))
            return heapq.merge(*lazy) if len(lazy) > 1 else iter(lazy[0])
        groups = [g for g in (pair, own, by_flow, self.everywhere) if g]
        if not groups:
            return iter(())
        if len(groups) == 1:
            return iter(groups[0])
        if len(groups) == 2:
            first, second = groups
            if len(first) + len(second) <= _SMALL:
                return iter(sorted(first + second))  # a few ranks: one C-level sort
        elif sum(map(len, groups)) <= _SMALL:
            return iter(sorted(chain.from_iterable(groups)))
        return heapq.merge(*groups)

    def _filtered(self, ranks: Iterable[int], flow: Any) -> Iterator[int]:
        filters = self.filters
        for rank in ranks:
            flows = filters.get(rank)
            if flows is None or flow in flows:
                yield rank

    def row_costs(self) -> dict[str | None, int | None]:
        """Entries each row's prebuilt cells would hold (None: the row must stay lazy)."""
        flow_total = sum(len(r) for r in self.flows.values())
        everywhere = len(self.everywhere)
        costs: dict[str | None, int | None] = {ANY: flow_total + (len(self.flows) + 1) * (everywhere + 1)}
        wide = self.wide_agents
        for agent in self.pairs.keys() | self.agents.keys():
            if agent in wide:
                costs[agent] = None
                continue
            row = self.pairs.get(agent, {})
            own = len(self.agents.get(agent, ()))
            keys = len(self.flows) + sum(1 for f in row if f not in self.flows)
            costs[agent] = sum(len(r) for r in row.values()) + flow_total + (keys + 1) * (own + everywhere + 1)
        return costs

    def row(self, agent: str | None) -> dict[str | None, tuple[int, ...]]:
        """The prebuilt cells of one row: flow -> ranks, with ``None`` for flows no rule names."""
        own = self.agents.get(agent, ()) if agent is not None else ()
        row = self.pairs.get(agent, {}) if agent is not None else {}
        cells: dict[str | None, tuple[int, ...]] = {
            flow: _merged(row.get(flow, ()), own, self.flows.get(flow, ()), self.everywhere)
            for flow in row.keys() | self.flows.keys()
        }
        cells[ANY] = _merged(own, self.everywhere)
        return cells


def _merged(*groups: tuple[int, ...]) -> tuple[int, ...]:
    present = [g for g in groups if g]
    if len(present) == 1:
        return present[0]
    return tuple(sorted(chain.from_iterable(present)))  # sorted runs: timsort merges them in C


class LazyRow(Generic[_T]):
    """A row of cells merged at query time: ``get(flow)`` gives the applicable items in order.

    Used where prebuilt cells would exceed the budget; it reads only immutable scopes, so any
    number of threads may share it. ``eager`` rows give tuples, the others iterators (the
    evaluation stops at the first match, so the merge goes no further than that).
    """

    __slots__ = ("_agent", "_eager", "_items", "_scopes")

    def __init__(self, scopes: Scopes, agent: str | None, items: Sequence[_T], *, eager: bool) -> None:
        self._scopes = scopes
        self._agent = agent
        self._items = items
        self._eager = eager

    def get(self, flow: Any) -> Iterable[_T]:
        """The items (rules or steps) applying to this row's agent and ``flow``, in order."""
        chosen = map(self._items.__getitem__, self._scopes.ranks(self._agent, flow))
        return tuple(chosen) if self._eager else chosen

    def __getitem__(self, flow: Any) -> Iterable[_T]:
        return self.get(flow)

    def __bool__(self) -> bool:
        return True


Row = Any  # a dict of prebuilt cells (flow -> tuple) or a LazyRow; both answer .get(flow) and [flow]


def build_rows(
    scopes: Scopes,
    rules: Sequence[Any],
    steps: Sequence[Any],
    step_cell: Callable[[tuple[int, ...]], tuple[Any, ...]] | None = None,
) -> tuple[dict[str | None, Row], dict[str | None, Row]]:
    """Rows of rules and of steps: prebuilt cells for the rows within the budget, lazy rows else.

    Rows are prebuilt cheapest first (then by name, so the choice is deterministic) while the
    total stays within :func:`cell_budget`; the row for unnamed agents competes like the others.
    ``step_cell`` builds a prebuilt cell of steps from its ranks (default: the steps at those ranks;
    the table passes :func:`~rule_engine.evaluation.dispatch.dispatched_cell`).
    """
    if step_cell is None:
        step_cell = lambda ranks: tuple(map(steps.__getitem__, ranks))  # noqa: E731
    budget = cell_budget(scopes.entries)
    rule_rows: dict[str | None, Row] = {}
    step_rows: dict[str | None, Row] = {}
    costs = scopes.row_costs()
    spent = 0
    for agent, cost in sorted(costs.items(), key=lambda item: (item[1] is None, item[1] or 0, item[0] or "")):
        if cost is not None and spent + cost <= budget:
            spent += cost
            cells = scopes.row(agent)
            rule_rows[agent] = {f: tuple(map(rules.__getitem__, r)) for f, r in cells.items()}
            step_rows[agent] = {f: step_cell(r) for f, r in cells.items()}
        else:
            rule_rows[agent] = LazyRow(scopes, agent, rules, eager=True)
            step_rows[agent] = LazyRow(scopes, agent, steps, eager=False)
    return rule_rows, step_rows
