"""Every field each rule reads, and the kind of value each comparison needs to run without raising.

Derived from a compiled :class:`~rule_engine.RuleTable` (its rules' condition models), with the
compiler's run-time semantics (docs/bundle-format.md): a missing or null field, or a path through a
non-object, makes a leaf false; a present value of another kind than the comparison needs raises
:class:`~rule_engine.RuleEvaluationError`. So for each leaf, :attr:`FieldUse.needs` is the set of
JSON kinds a present, non-null value may have (None: any kind, for ``exists`` and ``eq``/``ne null``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition, RuleBundle, kind_of
from rule_engine.evaluation.table import RuleTable

__all__ = ["FieldUse", "field_uses", "leaves_of", "needed_kinds", "observe", "uses_by_field"]

_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class FieldUse:
    """One comparison: which rule, which field, which operator, and the kinds it accepts."""

    rule_id: str
    field: str
    path: tuple[str, ...]
    op: str
    value_kind: str | None
    needs: frozenset[str] | None
    agents: tuple[str, ...] | None
    flows: tuple[str, ...] | None

    def accepts(self, kind: str) -> bool:
        """Whether a present, non-null value of ``kind`` can be compared without raising."""
        return self.needs is None or kind in self.needs

    def applies_to(self, agent: Any, flow: Any) -> bool:
        """Whether the rule is tried for an event of this agent and flow."""
        return (self.agents is None or agent in self.agents) and (self.flows is None or flow in self.flows)


def needed_kinds(leaf: Leaf) -> frozenset[str] | None:
    """The kinds of a present, non-null value the leaf compares without raising (None: any)."""
    op, value = leaf.op, leaf.value
    if op == "exists" or (op in ("eq", "ne") and value is None):
        return None
    if op in ("in", "not_in"):
        return frozenset({kind_of(value[0])})
    if op == "contains":
        return frozenset({"string", "list"}) if kind_of(value) == "string" else frozenset({"list"})
    if op in ("starts_with", "ends_with", "matches"):
        return frozenset({"string"})
    return frozenset({kind_of(value)})


def leaves_of(condition: Any) -> Iterator[Leaf]:
    """Every leaf of a condition tree, in order."""
    if condition is None:
        return
    if isinstance(condition, AllCondition | AnyCondition):
        for child in condition.conditions:
            yield from leaves_of(child)
    elif isinstance(condition, NotCondition):
        yield from leaves_of(condition.condition)
    elif isinstance(condition, Leaf):
        yield condition


def field_uses(source: RuleTable | RuleBundle) -> list[FieldUse]:
    """Every comparison of every rule, rules in the order the table tries them."""
    table = source if isinstance(source, RuleTable) else RuleTable.from_bundle(source)
    uses: list[FieldUse] = []
    for compiled in table.rules:
        rule = compiled.rule
        for leaf in leaves_of(rule.when):
            value_kind = None
            if leaf.has_value:
                value_kind = kind_of(leaf.value[0]) if leaf.op in ("in", "not_in") else kind_of(leaf.value)
            uses.append(
                FieldUse(
                    rule.id, leaf.field, leaf.path, leaf.op, value_kind, needed_kinds(leaf), rule.agents, rule.flows
                )
            )
    return uses


def uses_by_field(uses: list[FieldUse]) -> dict[str, list[FieldUse]]:
    """The comparisons grouped by field, fields in first-use order."""
    grouped: dict[str, list[FieldUse]] = {}
    for use in uses:
        grouped.setdefault(use.field, []).append(use)
    return grouped


def observe(event: Mapping[str, Any], path: tuple[str, ...]) -> str | None:
    """The kind of the value at ``path`` in ``event``, or None when the leaf would see no value.

    None covers a missing field, a null one, and a path through a non-object (all make a leaf false).
    """
    value: Any = event
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return None if value is None else kind_of(value)
