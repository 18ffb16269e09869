"""Operators and the shapes of the values they take: what a leaf's ``value`` may be for its ``op``.

Pure functions over plain values (no models), used by the bundle models' validators and by the
messages that describe a wrong value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from rule_engine.bundle import regex as _regex

Operator = Literal[
    "eq",
    "ne",
    "lt",
    "lte",
    "gt",
    "gte",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "ends_with",
    "matches",
    "exists",
]
OPERATORS: tuple[str, ...] = get_args(Operator)

_SCALAR_KINDS = {str: "string", int: "number", float: "number", bool: "bool", type(None): "null"}


def kind_of(value: Any) -> str:
    """The JSON kind of a value: string, number, bool, null, list, object (bool is not a number)."""
    kind = _SCALAR_KINDS.get(type(value))
    if kind is not None:
        return kind
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
    return type(value).__name__


def value_problem(op: str, value: Any, has_value: bool) -> str | None:
    if op == "exists":
        return "operator 'exists' takes no value" if has_value else None
    if not has_value:
        return f"operator {op!r} needs a value"
    kind = kind_of(value)
    if op in ("eq", "ne"):
        return (
            None
            if kind in ("string", "number", "bool", "null")
            else _shape(op, "a string, number, bool or null", value)
        )
    if op in ("lt", "lte", "gt", "gte"):
        return None if kind in ("string", "number") else _shape(op, "a number or a string", value)
    if op in ("in", "not_in"):
        if kind != "list":
            return _shape(op, "a list", value)
        if not value:
            return f"operator {op!r} needs a non-empty list: an empty list would never (or always) match"
        kinds = {kind_of(item) for item in value}
        if not kinds <= {"string", "number", "bool"}:
            return f"operator {op!r} needs a list of strings, numbers or bools, got items of kind {', '.join(sorted(kinds))}"
        if len(kinds) > 1:
            return f"operator {op!r} needs a list of one kind, got a mix of {' and '.join(sorted(kinds))}"
        return None
    if op == "contains":
        return None if kind in ("string", "number", "bool") else _shape(op, "a string, number or bool", value)
    if op in ("starts_with", "ends_with"):
        return None if kind == "string" else _shape(op, "a string", value)
    if op == "matches":
        if kind != "string":
            return _shape(op, "a string (an RE2 regular expression)", value)
        error = _regex.check(value)
        return None if error is None else f"invalid regular expression {clip(value)}: {error}"
    return f"unknown operator {op!r}"  # pragma: no cover - the Literal rejects it first


def _shape(op: str, expected: str, value: Any) -> str:
    return f"operator {op!r} needs {expected}, got {kind_of(value)} {clip(value)}"


def clip(value: Any, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters with ``...`` (for messages that quote user values)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# C0 and C1 controls, DEL, the line and paragraph separators and the bidirectional formatting
# characters (marks, embeddings, overrides, isolates): none belongs in an id, all can disguise one.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def unsafe_character(text: str) -> str | None:
    """Why ``text`` is not acceptable as an id (its first control or bidi character), or None."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "bidirectional formatting" if ord(char) > 0x9F else "control"
    return (
        f"contains the {kind} character U+{ord(char):04X} at position {found.start()}: "
        "ids, versions, decisions and names may not contain control or bidirectional characters"
    )
