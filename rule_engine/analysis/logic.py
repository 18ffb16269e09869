"""Sound, conservative reasoning about conditions: always true, never true, and implication.

Every answer ``True`` is a proof under the compiler's semantics (docs/bundle-format.md), assuming the
event can be evaluated; ``False`` means "not proven". So lint findings built on these never flag a
rule that could decide. Values are compared with their JSON kind (``1`` is not ``true``).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition, kind_of

__all__ = ["always", "canonical", "contradictory", "implies", "never"]

_RANGE = ("lt", "lte", "gt", "gte")
_VALUE_SETS = ("eq", "in")


_CANONICAL: dict[int, tuple[Any, str]] = {}
_CANONICAL_SIZE = 100_000


def canonical(condition: Any) -> str:
    """The condition as canonical JSON text ("null" for a rule without ``when``), cached per object."""
    if condition is None:
        return "null"
    cached = _CANONICAL.get(id(condition))
    if cached is not None and cached[0] is condition:
        return cached[1]
    text = json.dumps(condition.model_dump(mode="json", by_alias=True, exclude_unset=True), sort_keys=True)
    if len(_CANONICAL) >= _CANONICAL_SIZE:
        _CANONICAL.clear()
    _CANONICAL[id(condition)] = (condition, text)  # keeps the object alive, so its id is not reused
    return text


def always(condition: Any) -> bool:
    """Proven true on every event."""
    if condition is None:
        return True
    if isinstance(condition, AllCondition):
        return all(always(c) for c in condition.conditions)
    if isinstance(condition, AnyCondition):
        return any(always(c) for c in condition.conditions)
    if isinstance(condition, NotCondition):
        return never(condition.condition)
    return False


def never(condition: Any) -> bool:
    """Proven false on every event."""
    if condition is None:
        return False
    if isinstance(condition, AllCondition):
        return any(never(c) for c in condition.conditions) or contradictory(_flatten_all(condition))
    if isinstance(condition, AnyCondition):
        return all(never(c) for c in condition.conditions)
    if isinstance(condition, NotCondition):
        return always(condition.condition)
    return False


def _flatten_all(condition: AllCondition) -> list[Any]:
    parts: list[Any] = []
    for child in condition.conditions:
        if isinstance(child, AllCondition):
            parts.extend(_flatten_all(child))
        else:
            parts.append(child)
    return parts


def contradictory(parts: list[Any]) -> bool:
    """Proven that the conditions cannot all be true together (the children of an ``all``)."""
    leaves: dict[str, list[Leaf]] = {}
    for part in parts:
        if isinstance(part, Leaf):
            leaves.setdefault(part.field, []).append(part)
    if any(_field_contradiction(group) for group in leaves.values() if len(group) > 1):
        return True
    positives = [p for p in parts if not isinstance(p, NotCondition)]
    negated = [p.condition for p in parts if isinstance(p, NotCondition)]
    return any(implies(p, q) for p in positives for q in negated)


def _typed(value: Any) -> tuple[str, Any]:
    return (kind_of(value), value)


def _allowed_set(leaf: Leaf) -> set[tuple[str, Any]] | None:
    """The values a leaf accepts when it is a finite set (eq / in with non-null values)."""
    if leaf.op == "eq" and leaf.value is not None:
        return {_typed(leaf.value)}
    if leaf.op == "in":
        return {_typed(v) for v in leaf.value}
    return None


def _satisfies(value: tuple[str, Any], leaf: Leaf) -> bool | None:
    """Whether a present value of a known kind makes the leaf true (None: cannot tell)."""
    kind, actual = value
    op, expected = leaf.op, leaf.value
    if op == "exists" or (op == "ne" and expected is None):
        return True
    if op == "eq" and expected is None:
        return False
    if op in ("eq", "ne", *_RANGE):
        if kind_of(expected) != kind:
            return None  # raises at run time: no proof either way
        if op == "eq":
            return bool(actual == expected)
        if op == "ne":
            return bool(actual != expected)
        return bool(_ORDER[op](actual, expected))
    if op in ("in", "not_in"):
        if kind_of(expected[0]) != kind:
            return None
        inside = any(actual == item for item in expected)
        return inside if op == "in" else not inside
    return None


_ORDER: dict[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def _field_contradiction(group: list[Leaf]) -> bool:
    requires_value = [leaf for leaf in group if not (leaf.op == "eq" and leaf.value is None) and leaf.op != "exists"]
    if requires_value and any(leaf.op == "eq" and leaf.value is None for leaf in group):
        return True  # "is missing or null" with a comparison that needs a value
    finite: set[tuple[str, Any]] | None = None
    for leaf in group:
        allowed = _allowed_set(leaf)
        if allowed is not None:
            finite = allowed if finite is None else {v for v in finite if v in allowed}
    if finite is not None:
        others = [leaf for leaf in group if _allowed_set(leaf) is None]
        return not any(all(_satisfies(v, leaf) is not False for leaf in others) for v in finite)
    return _empty_range(group)


def _empty_range(group: list[Leaf]) -> bool:
    bounds = [leaf for leaf in group if leaf.op in _RANGE]
    kinds = {kind_of(leaf.value) for leaf in bounds}
    if len(kinds) != 1:
        return False
    lows = [(leaf.value, leaf.op == "gt") for leaf in bounds if leaf.op in ("gt", "gte")]
    highs = [(leaf.value, leaf.op == "lt") for leaf in bounds if leaf.op in ("lt", "lte")]
    if not lows or not highs:
        return False
    low, low_open = max(lows, key=lambda b: (b[0], b[1]))
    high, high_open = min(highs, key=lambda b: (b[0], not b[1]))
    return bool(low > high or (low == high and (low_open or high_open)))


def implies(a: Any, b: Any) -> bool:
    """Proven: whenever ``a`` is true, ``b`` is true (None is the condition that is always true)."""
    return _implies(canonical(a), canonical(b), a, b)


def _implies(key_a: str, key_b: str, a: Any, b: Any) -> bool:
    if key_a == key_b or always(b) or never(a):
        return True
    if a is None:
        return False
    if isinstance(b, AnyCondition) and any(implies(a, child) for child in b.conditions):
        return True
    if isinstance(b, AllCondition) and all(implies(a, child) for child in b.conditions):
        return True
    if isinstance(a, AllCondition) and any(implies(child, b) for child in a.conditions):
        return True
    if isinstance(a, AnyCondition) and all(implies(child, b) for child in a.conditions):
        return True
    if isinstance(a, NotCondition) and isinstance(b, NotCondition):
        return implies(b.condition, a.condition)
    if isinstance(a, Leaf) and isinstance(b, Leaf) and a.field == b.field:
        return _leaf_implies(a, b)
    return False


def _leaf_implies(a: Leaf, b: Leaf) -> bool:
    if a.op == "exists" or (a.op == "eq" and a.value is None):
        return False
    if b.op == "exists" or (b.op == "ne" and b.value is None):
        return True  # a true comparison saw a present, non-null value
    finite = _allowed_set(a)
    if finite is not None:
        return all(_satisfies(v, b) is True for v in finite)
    if a.op in _RANGE and b.op in _RANGE and kind_of(a.value) == kind_of(b.value):
        if a.op in ("gt", "gte") and b.op in ("gt", "gte"):
            return bool(a.value > b.value or (a.value == b.value and (b.op == "gte" or a.op == "gt")))
        if a.op in ("lt", "lte") and b.op in ("lt", "lte"):
            return bool(a.value < b.value or (a.value == b.value and (b.op == "lte" or a.op == "lt")))
    return False
