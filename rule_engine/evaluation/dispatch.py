"""Hash dispatch: a run of rules in one cell that test one field for equality, decided by one dict lookup.

Many rule sets discriminate on the value of one field (``tier == "gold"``, ``country in [...]``).
When at least :data:`MIN_RUN` *consecutive* rules of a cell (in evaluation order: priority, then
file order) are each exactly one leaf ``eq`` (a non-null scalar) or ``in`` on the *same* field path,
comparing with values of the *same* kind, the table replaces them with one step that reads the
field once and looks its value up in a dict from each value to the decision of the *first* rule of
the run holding it. First match by priority is kept exactly:

* rules before and after the run, including interleaved rules that cannot be dispatched (another
  field, another operator, a compound condition), stay separate steps in their places: a run is
  only ever consecutive rules;
* the value is tested with the compiled leaf's own type guard (:func:`guard_of`): ``str`` for a
  string run; ``int`` or a finite ``float`` (not ``bool``) for a number run; ``bool`` for a bool
  run. Those are the values for which the compiled test is ``value == constant`` (``in`` a
  frozenset, ``is`` for bools), which is exactly what a dict lookup of these built-in types does
  (``1``, ``1.0`` and ``-0.0 + 1`` are one key, as they are ``==``; ``True`` never reaches a
  number run's dict, as the guard sends it elsewhere);
* a missing field, a null, or a path through something that is not a mapping: no rule of the
  run matches (each compiled leaf is false there), the step is false;
* any other value (a ``str`` subclass, ``True`` against numbers, NaN, a list...) and any
  exception while reading the field: the run's rules are tried one by one as before, so the same
  rule matches, or the same :class:`~rule_engine.errors.RuleEvaluationError` is raised for the
  same rule.

Bounds: a run's dict holds one entry per distinct value of its rules; identical runs of rules (the
same rules merged into several cells) share one dict, and all of a table's dicts together hold at
most :func:`lookup_budget` entries (its rules' values once, at least 4,096): a run past the budget
is scanned as before. So dispatch adds memory linear in the bundle, whatever its cells.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rule_engine.bundle.models import Leaf
from rule_engine.bundle.values import kind_of
from rule_engine.errors import RuleEvaluationError

__all__ = ["MIN_RUN", "EqualityTest", "Lookups", "dispatched_cell", "equality_test", "guard_of", "lookup_budget"]

#: The fewest consecutive dispatchable rules replaced by one lookup (below, the scan is as cheap).
MIN_RUN = 4

Step = tuple[Callable[[Mapping[str, Any]], Any], Any]  # (matcher, decision); decision None: a lookup


@dataclass(frozen=True, slots=True)
class EqualityTest:
    """What makes a rule dispatchable: its one leaf's field path, value kind and values."""

    path: tuple[str, ...]
    kind: str  # "string", "number" or "bool"
    values: tuple[Any, ...]

    @property
    def run_key(self) -> tuple[tuple[str, ...], str]:
        """Rules with equal run keys may share one lookup."""
        return self.path, self.kind


def equality_test(condition: Any, paths: dict[str, tuple[str, ...]] | None = None) -> EqualityTest | None:
    """The equality test a rule's whole condition is, or None when it is anything else.

    ``paths`` (field text -> path) makes the rules of one table that test one field share its path.
    """
    if type(condition) is not Leaf:
        return None
    op, value = condition.op, condition.value
    if op == "eq" and value is not None:
        kind, values = kind_of(value), (value,)
    elif op == "in" and isinstance(value, list | tuple):
        kind = kind_of(value[0]) if value else "string"  # as the compiler's _element_kind
        values = tuple(frozenset(value))  # the compiled test is `v in frozenset(value)`
    else:
        return None
    if kind not in _GUARDS:
        return None
    field = condition.field
    path = paths.get(field) if paths is not None else None
    if path is None:
        path = condition.path
        if paths is not None:
            paths[field] = path
    return EqualityTest(path, kind, values)


def _is_str(v: Any) -> bool:
    return type(v) is str


def _is_number(v: Any) -> bool:
    return type(v) is int or (type(v) is float and v - v == 0.0)


def _is_bool(v: Any) -> bool:
    return type(v) is bool


_GUARDS: dict[str, Callable[[Any], bool]] = {"string": _is_str, "number": _is_number, "bool": _is_bool}


def guard_of(kind: str) -> Callable[[Any], bool]:
    """The compiled leaf's type guard for ``kind``: True where its test is plain ``==`` / ``in``."""
    return _GUARDS[kind]


class Lookups:
    """The lookup steps of one table under construction, shared between cells, within a budget.

    A run repeated in several cells (the same ranks) gets one step. Every new step's dict costs
    its entries against ``budget`` (:func:`lookup_budget`: linear in the bundle's values); a run
    that would exceed it is scanned instead, so a bundle whose runs differ from cell to cell (one
    long ``everywhere`` list merged with each flow's own rule) cannot multiply its values by its
    cells.
    """

    __slots__ = ("budget", "steps")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.steps: dict[tuple[int, ...], Step] = {}


def lookup_budget(tests: Sequence[EqualityTest | None]) -> int:
    """Dict entries a table's lookups may hold in all: its rules' values once, at least 4,096."""
    return max(4096, sum(len(t.values) for t in tests if t is not None))


def dispatched_cell(
    ranks: Sequence[int],
    steps: Sequence[Step],
    tests: Sequence[EqualityTest | None],
    shared: Lookups,
) -> tuple[Step, ...]:
    """The steps of one cell (rule ``ranks`` in order), each run of >= MIN_RUN like tests as one lookup.

    ``shared`` holds the table's lookup steps (identical runs share one) and what its budget has left.
    """
    cell: list[Step] = []
    i, n = 0, len(ranks)
    while i < n:
        test = tests[ranks[i]]
        j = i + 1
        if test is not None:
            key = test.run_key
            while j < n and (other := tests[ranks[j]]) is not None and other.run_key == key:
                j += 1
        run = tuple(ranks[i:j])
        step = shared.steps.get(run) if test is not None and j - i >= MIN_RUN else None
        if step is None and test is not None and j - i >= MIN_RUN:
            cost = sum(len(t.values) for r in run if (t := tests[r]) is not None)
            if cost <= shared.budget:
                shared.budget -= cost
                step = shared.steps[run] = _lookup_step(test, [steps[r] for r in run], [tests[r] for r in run])
        if step is None:
            cell.extend(steps[r] for r in run)
        else:
            cell.append(step)
        i = j
    return tuple(cell)


def _lookup_step(test: EqualityTest, run: list[Step], tests: list[EqualityTest | None]) -> Step:
    """One step standing for ``run``: its matcher returns the first matching rule's decision, or False."""
    table: dict[Any, Any] = {}
    for step, rule_test in zip(run, tests, strict=True):
        assert rule_test is not None
        for value in rule_test.values:
            table.setdefault(value, step[1])
    scan = _scanner(tuple(run))
    guard = _GUARDS[test.kind]
    get = table.get
    *parents, last = test.path
    if not parents:

        def lookup(event: Mapping[str, Any]) -> Any:
            try:
                value = event.get(last)
            except Exception:  # the scan raises it for the rule that reads it first
                return scan(event)
            if guard(value):
                return get(value, False)
            return False if value is None else scan(event)

    else:

        def lookup(event: Mapping[str, Any]) -> Any:
            try:
                holder: Any = event
                for part in parents:
                    holder = holder.get(part)
                    if not (type(holder) is dict or isinstance(holder, Mapping)):
                        return False  # the path goes through a non-object: every leaf is false
                value = holder.get(last)
            except Exception:
                return scan(event)
            if guard(value):
                return get(value, False)
            return False if value is None else scan(event)

    return lookup, None


def _scanner(run: tuple[Step, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """The run's rules tried one by one, as the table's loop would (errors named by the failing rule)."""

    def scan(event: Mapping[str, Any]) -> Any:
        for match, decision in run:
            try:
                if match(event):
                    return decision
            except RuleEvaluationError:
                raise
            except Exception as exc:  # as RuleTable.evaluate wraps it
                raise RuleEvaluationError(decision.rule_id or "?", "?", f"{type(exc).__name__}: {exc}") from exc
        return False

    return scan
