"""The compiled, immutable rule table that evaluators query in their hot path.

:meth:`RuleTable.from_bundle` does every piece of work that does not depend on the event once:
conditions become callables, rules are sorted by priority and indexed by (agent, flow) (see
:mod:`rule_engine.evaluation.index`: wildcards stay wildcards, so the index is linear in the
bundle), and every possible :class:`Decision` is built in advance. Evaluating an event is then two
dictionary lookups and a loop over the applicable rules' matchers.

A table never changes after it is built and holds no locks, so any number of threads may share it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from rule_engine.bundle.models import Outcome, Rule, RuleBundle, gc_paused
from rule_engine.errors import RuleEvaluationError
from rule_engine.evaluation.compiler import Matcher, compile_condition
from rule_engine.evaluation.dispatch import EqualityTest, Lookups, dispatched_cell, equality_test, lookup_budget
from rule_engine.evaluation.index import Row, Scopes, build_rows

__all__ = ["BundleSource", "CompiledRule", "Decision", "RuleQuery", "RuleTable", "freeze_json"]

_T = TypeVar("_T")
_ANY = None  # index key of "every agent" / "every flow"


@dataclass(frozen=True, slots=True, eq=False)
class Decision:
    """The answer for one event.

    ``rule_id`` is None when no rule matched (the bundle's default decision). ``error`` is set when
    the event could not be evaluated; ``decision`` then holds the bundle's ``on_error`` decision.
    ``version_id`` names the deployed version that answered (None for a table built outside a
    :class:`~rule_engine.DeploymentManager`).

    A table builds every decision it can give once, so decisions compare (and hash) by identity:
    compare their fields (``decision``, ``rule_id``...) to compare answers.
    """

    decision: str
    rule_id: str | None = None
    reason: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    version_id: str | None = None
    error: str | None = None

    @property
    def is_error(self) -> bool:
        """Whether this is the error decision given because evaluation failed."""
        return self.error is not None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the decision."""
        return {
            "decision": self.decision,
            "rule_id": self.rule_id,
            "reason": self.reason,
            "params": thaw_json(self.params),
            "version_id": self.version_id,
            "error": self.error,
        }


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RuleQuery:
    """Which rules apply to an agent and a flow (None matches only rules that name no agent/flow)."""

    agent: str | None = None
    flow: str | None = None


class BundleSource:
    """Where a table's bundle comes from when a caller asks for it (the table itself never needs it).

    Built with a bundle, it holds it (a table compiled outside a manager). Built with ``load``, it
    holds only that callable (a manager's: it re-reads the bundle from the store, digest-checked)
    and a weak reference to the last bundle it loaded, so the bundle lives only while a caller uses it.
    """

    __slots__ = ("_held", "_last", "_load")

    def __init__(self, bundle: RuleBundle | None = None, load: Callable[[], RuleBundle] | None = None) -> None:
        """Hold ``bundle``, or load it with ``load`` on demand (one of them is required)."""
        if bundle is None and load is None:
            raise ValueError("a BundleSource needs a bundle or a loader")
        self._held = bundle
        self._load = load
        self._last: Callable[[], RuleBundle | None] = _nothing

    def get(self) -> RuleBundle:
        """The bundle (loaded again when no caller holds the last one loaded)."""
        if self._held is not None:
            return self._held
        bundle = self._last()
        if bundle is None:
            assert self._load is not None
            bundle = self._load()
            self._last = weakref.ref(bundle)
        return bundle

    @property
    def holds(self) -> bool:
        """Whether the bundle is kept alive by this source (False: re-read on demand)."""
        return self._held is not None


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    """A rule ready to run: its id, order, matcher and the decision it gives.

    ``rule`` (the source model) is not kept: it comes from the table's :class:`BundleSource`
    (for a manager's table that re-reads the bundle: take ``table.bundle`` once to walk many rules).
    """

    id: str
    priority: int
    position: int
    match: Matcher
    decision: Decision
    source: BundleSource = field(repr=False)

    @property
    def rule(self) -> Rule:
        """The rule this was compiled from (from the table's bundle source)."""
        return self.source.get().rules[self.position]


class RuleTable:
    """An immutable, indexed, compiled rule table built from one bundle."""

    __slots__ = (
        "__weakref__",  # lets tests (and caches) check that an evicted version's table is freed
        "_default",
        "_error",
        "_index",
        "_rules",
        "_rules_by_id",
        "_scopes",
        "_steps",
        "_tests",
        "bundle_id",
        "bundle_version",
        "digest",
        "source",
        "version_id",
    )

    source: BundleSource
    bundle_id: str
    bundle_version: str
    digest: str
    version_id: str | None
    _rules: tuple[CompiledRule, ...]
    _rules_by_id: Mapping[str, CompiledRule]
    _scopes: Scopes  # what each rule names, by rank (index.py); shared by restamped copies
    _index: dict[str | None, Row]  # agent -> flow -> applicable CompiledRules (see index.py)
    _steps: dict[str | None, Row]  # the same cells as (matcher, decision) pairs: the hot loop's view
    _tests: tuple[EqualityTest | None, ...]  # by rank: the equality test a rule is, if any (dispatch.py)
    _default: Decision
    _error: Decision  # the on_error decision with error="" (error_decision fills it in)

    def __init__(
        self,
        bundle: RuleBundle,
        *,
        version_id: str | None = None,
        load: Callable[[], RuleBundle] | None = None,
    ) -> None:
        """Compile ``bundle``; prefer :meth:`from_bundle`."""
        with gc_paused():
            self._build(bundle, version_id, BundleSource(load=load) if load is not None else BundleSource(bundle))

    def _build(self, bundle: RuleBundle, version_id: str | None, source: BundleSource) -> None:
        set_ = object.__setattr__
        set_(self, "source", source)
        set_(self, "bundle_id", bundle.bundle_id)
        set_(self, "bundle_version", bundle.version)
        set_(self, "digest", bundle.digest)
        set_(self, "version_id", version_id)
        strings: dict[Any, Any] = {}
        compiled = tuple(
            CompiledRule(
                id=rule.id,
                priority=rule.priority,
                position=position,
                match=compile_condition(rule.when, rule.id),
                decision=_decision(rule.then, rule.id, version_id, strings),
                source=source,
            )
            for position, rule in enumerate(bundle.rules)
        )
        ordered = tuple(sorted(compiled, key=_order))
        rules = bundle.rules
        scopes = Scopes([(rules[r.position].agents, rules[r.position].flows) for r in ordered])
        paths: dict[str, tuple[str, ...]] = {}
        tests = tuple(equality_test(rules[r.position].when, paths) for r in ordered)
        index, steps = _rows_of(scopes, ordered, tests)
        set_(self, "_scopes", scopes)
        set_(self, "_tests", _kept_tests(tests, steps))  # () when nothing dispatches
        set_(self, "_rules", ordered)
        set_(self, "_rules_by_id", MappingProxyType({r.id: r for r in ordered}))
        set_(self, "_index", index)
        set_(self, "_steps", steps)
        set_(self, "_default", _decision(bundle.default_outcome, None, version_id))
        error = bundle.error_outcome
        set_(self, "_error", Decision(error.decision, None, error.reason, freeze_json(error.params or {}), error=""))

    @classmethod
    def from_bundle(
        cls,
        bundle: RuleBundle,
        *,
        version_id: str | None = None,
        load: Callable[[], RuleBundle] | None = None,
    ) -> RuleTable:
        """Compile a validated bundle into a table (tagging every decision with ``version_id``).

        Without ``load`` the table holds ``bundle`` (its :attr:`bundle`). With ``load`` (a callable
        returning the same bundle again, e.g. re-read from a store) the table keeps no part of the
        bundle's models and :attr:`bundle` calls ``load`` when asked.
        """
        return cls(bundle, version_id=version_id, load=load)

    @property
    def bundle(self) -> RuleBundle:
        """The bundle this table was compiled from (re-read through :attr:`source` when not held)."""
        return self.source.get()

    def restamped(
        self,
        version_id: str | None,
        *,
        load: Callable[[], RuleBundle] | None = None,
        bundle: RuleBundle | None = None,
    ) -> RuleTable:
        """The same table with decisions tagged ``version_id``, reusing the compiled matchers.

        ``load`` or ``bundle`` (the same bundle) give the copy its own :class:`BundleSource`;
        without either it shares this table's.
        """
        table = object.__new__(RuleTable)
        set_ = object.__setattr__
        source = BundleSource(bundle, load) if load is not None or bundle is not None else self.source
        by_id = {
            r.id: CompiledRule(
                r.id, r.priority, r.position, r.match, replace(r.decision, version_id=version_id), source
            )
            for r in self._rules
        }
        ordered = tuple(by_id[r.id] for r in self._rules)
        index, steps = _rows_of(self._scopes, ordered, self._tests)
        for name in ("_scopes", "_tests", "bundle_id", "bundle_version", "digest", "_error"):
            set_(table, name, getattr(self, name))
        set_(table, "source", source)
        set_(table, "version_id", version_id)
        set_(table, "_rules", ordered)
        set_(table, "_rules_by_id", MappingProxyType(by_id))
        set_(table, "_index", index)
        set_(table, "_steps", steps)
        set_(table, "_default", replace(self._default, version_id=version_id))
        return table

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RuleTable is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RuleTable is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        return (
            f"<RuleTable {self.bundle_id}@{self.bundle_version} rules={len(self._rules)} "
            f"version_id={self.version_id!r}>"
        )

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        """Every rule, in the order they are tried (priority high to low, then file order)."""
        return self._rules

    def rule(self, rule_id: str) -> CompiledRule:
        """The rule with that id (KeyError if none)."""
        return self._rules_by_id[rule_id]

    @property
    def default_decision(self) -> Decision:
        """The decision given when no rule matches."""
        return self._default

    def query(self, query: RuleQuery) -> tuple[CompiledRule, ...]:
        """The rules that apply to the query's agent and flow, in the order they are tried.

        For the cells prebuilt at prepare time the same tuple comes back every time; cells of a
        very wide index are merged per query (see :mod:`rule_engine.evaluation.index`).
        """
        by_flow = self._index.get(query.agent) or self._index[_ANY]
        rules: tuple[CompiledRule, ...] = by_flow.get(query.flow) or by_flow[_ANY]
        return rules

    def evaluate(self, event: Mapping[str, Any]) -> Decision:
        """Decide one event: the first applicable rule that matches, else the default.

        Raises :class:`RuleEvaluationError` when a rule cannot be evaluated on this event (a value
        of the wrong type, for example). :class:`rule_engine.RuleEngine` turns that into an error
        decision and counts it; call this directly only where you handle it yourself.
        """
        steps: Iterable[tuple[Matcher, Decision]]
        try:
            by_flow = self._steps.get(event.get("agent_id")) or self._steps[_ANY]
            steps = by_flow.get(event.get("flow_id")) or by_flow[_ANY]
        except TypeError:  # an unhashable agent_id or flow_id: no rule names it
            steps = self._unhashable_steps(event)
        decision = self._default
        try:
            for match, decision in steps:
                if match(event):  # a lookup step (decision None) returns the decision it found
                    return decision or match(event) or self._default  # type: ignore[return-value]
        except RuleEvaluationError:
            raise
        except Exception as exc:  # a user-supplied event can make any comparison fail
            failed = decision.rule_id if decision is not None else None  # a lookup step wraps its own
            raise RuleEvaluationError(failed or "?", "?", f"{type(exc).__name__}: {exc}") from exc
        return self._default

    def error_decision(self, error: str) -> Decision:
        """The bundle's ``on_error`` decision, marked with ``error``."""
        return replace(self._error, version_id=self.version_id, error=error)

    def explain(self, event: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Each applicable rule in order with what it did on ``event``: matched, no match or error."""
        candidates = _cell(self._index, event.get("agent_id"), event.get("flow_id"))
        trace: list[tuple[str, str]] = []
        for rule in candidates:
            try:
                matched = rule.match(event)
            except Exception as exc:
                trace.append((rule.id, f"error: {exc}"))
                break
            trace.append((rule.id, "matched" if matched else "no match"))
            if matched:
                break
        return trace

    def _unhashable_steps(self, event: Mapping[str, Any]) -> Any:
        return _cell(self._steps, event.get("agent_id"), event.get("flow_id"))


def _cell(index: Mapping[Any, Mapping[Any, _T]], agent: Any, flow: Any) -> _T:
    """The index cell for an agent and flow; an unhashable one is named by no rule (the wildcard)."""
    try:
        by_flow = index.get(agent) or index[_ANY]
    except TypeError:
        by_flow = index[_ANY]
    try:
        return by_flow.get(flow) or by_flow[_ANY]
    except TypeError:
        return by_flow[_ANY]


def _decision(
    outcome: Outcome, rule_id: str | None, version_id: str | None, shared: dict[Any, Any] | None = None
) -> Decision:
    """The decision of ``outcome``; equal decision and reason strings are one object per table (``shared``)."""
    decision, reason = outcome.decision, outcome.reason
    if shared is not None:
        decision = shared.setdefault(decision, decision)
        reason = shared.setdefault(reason, reason)
    return Decision(
        decision=decision,
        rule_id=rule_id,
        reason=reason,
        params=freeze_json(outcome.params) if outcome.params else _EMPTY,
        version_id=version_id,
    )


def _rows_of(
    scopes: Scopes, ordered: tuple[CompiledRule, ...], tests: tuple[EqualityTest | None, ...]
) -> tuple[dict[str | None, Row], dict[str | None, Row]]:
    """The index rows (of rules, and of the hot loop's (matcher, decision) steps) of ordered rules.

    Prebuilt cells of steps dispatch runs of equality tests on one field by a dict lookup
    (:mod:`rule_engine.evaluation.dispatch`); lazy rows scan.
    """
    steps = tuple((r.match, r.decision) for r in ordered)
    if not any(tests):
        return build_rows(scopes, ordered, steps)
    shared = Lookups(lookup_budget(tests))
    return build_rows(scopes, ordered, steps, lambda ranks: dispatched_cell(ranks, steps, tests, shared))


def _kept_tests(tests: tuple[EqualityTest | None, ...], steps: dict[Any, Row]) -> tuple[EqualityTest | None, ...]:
    """``tests`` if some prebuilt cell dispatches (restamped copies rebuild its lookups), else ``()``."""
    for row in steps.values():
        if isinstance(row, dict) and any(d is None for cell in row.values() for _, d in cell):
            return tests
    return ()


def _order(rule: CompiledRule) -> tuple[int, int]:
    return (-rule.priority, rule.position)


def freeze_json(value: Any) -> Any:
    """A read-only deep copy of a JSON value (objects become mapping proxies, lists tuples)."""
    if isinstance(value, dict):
        return MappingProxyType({k: freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_json(v) for v in value)
    return value


def thaw_json(value: Any) -> Any:
    """The plain JSON form (dicts and lists) of a value made by :func:`freeze_json`."""
    if isinstance(value, Mapping):
        return {k: thaw_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw_json(v) for v in value]
    return value
