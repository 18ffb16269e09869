"""A deliberately plain reference interpreter of rule conditions, written from the format spec.

It walks the condition model for every event, with none of the compiler's code generation,
caching or fast paths, so that property tests can hold :mod:`rule_engine.evaluation.compiler` to the spec:

* a field path is looked up part by part; a part applied to something that is not an object
  (mapping), or a key that is absent, makes the field *missing*;
* ``exists`` is true when the field is present, even if null;
* ``eq null`` is true when the field is present and null; ``ne null`` when present and not null;
* any other leaf on a missing or null field is false;
* otherwise the event value must be of the kind the operator compares with (bool is not a
  number; for ``in``/``not_in`` the kind of the list's items); if not, evaluation raises;
* ``contains``: event string and string value -> substring; event list -> some item of the
  value's kind equals the value; anything else raises;
* ``all``/``any`` evaluate left to right and stop early; ``not`` inverts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition

__all__ = ["MISSING", "Mismatch", "json_kind", "lookup", "reference_match"]


class Mismatch(Exception):
    """The event value's kind does not fit the operator and constant."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def json_kind(value: Any) -> str:
    """string, number, bool, null, list or object; bool before number, subclasses by their base."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return "other"


def lookup(event: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING."""
    current = event
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return MISSING
        current = current[part]
    return current


def reference_match(condition: Any, event: Mapping[str, Any]) -> bool:
    """Whether ``condition`` holds for ``event``; raises :class:`Mismatch` on a kind mismatch."""
    if isinstance(condition, AllCondition):
        return all(reference_match(child, event) for child in condition.conditions)
    if isinstance(condition, AnyCondition):
        return any(reference_match(child, event) for child in condition.conditions)
    if isinstance(condition, NotCondition):
        return not reference_match(condition.condition, event)
    assert isinstance(condition, Leaf)
    return _leaf(condition.op, condition.value, lookup(event, condition.field))


def _leaf(op: str, expected: Any, actual: Any) -> bool:
    if op == "exists":
        return actual is not MISSING
    if expected is None and op == "eq":
        return actual is not MISSING and actual is None
    if expected is None and op == "ne":
        return actual is not MISSING and actual is not None
    if actual is MISSING or actual is None:
        return False
    got = json_kind(actual)
    if op == "contains":
        if got == "string" and json_kind(expected) == "string":
            return expected in actual
        if got == "list":
            want = json_kind(expected)
            return any(json_kind(item) == want and item == expected for item in actual)
        raise Mismatch(op, expected, actual)
    if op in ("starts_with", "ends_with", "matches"):
        if got != "string":
            raise Mismatch(op, expected, actual)
        if op == "starts_with":
            return str(actual).startswith(expected)
        if op == "ends_with":
            return str(actual).endswith(expected)
        return re.search(expected, str(actual)) is not None
    if op in ("in", "not_in"):
        if got != json_kind(expected[0]):
            raise Mismatch(op, expected, actual)
        found = any(item == actual for item in expected)
        return found if op == "in" else not found
    if got != json_kind(expected):
        raise Mismatch(op, expected, actual)
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "lt":
        return bool(actual < expected)
    if op == "lte":
        return bool(actual <= expected)
    if op == "gt":
        return bool(actual > expected)
    if op == "gte":
        return bool(actual >= expected)
    raise AssertionError(f"unknown operator {op!r}")
