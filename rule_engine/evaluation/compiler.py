"""Compile rule conditions into Python callables, once, at prepare time.

Each condition becomes one generated function that reads the event and returns ``True`` or ``False``
with no walk of the JSON tree per event. Code is generated per condition *shape* (the tree of
operators, field-path lengths and value kinds), cached, and instantiated per rule with the rule's
field names and values bound as closure constants: no text from a bundle ever becomes source code.

Run-time semantics (docs/bundle-format.md): a missing or null field makes a leaf false (except
``exists`` and ``eq``/``ne`` with ``null``); a value of the wrong kind for the comparison raises
:class:`~rule_engine.errors.RuleEvaluationError` instead of quietly answering false.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine.bundle import regex as _regex
from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition, kind_of
from rule_engine.bundle.values import clip
from rule_engine.errors import RuleEvaluationError

__all__ = ["Matcher", "compile_condition", "match_always"]

Matcher = Callable[[Mapping[str, Any]], bool]

_MISSING: Any = object()
_CLIP = 40  # width of a value quoted in an evaluation error (bundle messages use 60)
_NUMBER_TYPES = frozenset({int, float})
_SHAPE_CACHE_SIZE = 4096


def match_always(event: Mapping[str, Any]) -> bool:
    """The matcher of a rule without ``when``."""
    return True


@dataclass(frozen=True, slots=True)
class LeafInfo:
    """What the slow path needs to judge a value the fast path's type test did not accept."""

    rule_id: str
    field: str
    op: str
    value: Any


def _slow_path(leaf: LeafInfo, actual: Any) -> bool:
    """Judge a leaf whose event value is not of the exact built-in type the fast path expects.

    Subclasses of the expected type (a ``str`` subclass, an ``IntEnum``...) are compared normally;
    anything else is a type mismatch and raises :class:`RuleEvaluationError`.
    """
    op, expected = leaf.op, leaf.value
    got = kind_of(actual)
    want = _element_kind(expected) if op in ("in", "not_in") else kind_of(expected)
    if op == "contains":
        if got == "list":
            return _list_contains(expected, actual)
        if got == "string" and want == "string":
            return str(expected) in str(actual)
    elif op in ("starts_with", "ends_with", "matches"):
        if got == "string":
            text = str(actual)
            if op == "starts_with":
                return text.startswith(expected)
            if op == "ends_with":
                return text.endswith(expected)
            return _regex.compile_search(expected)(text)
    elif got == want:
        return _compare(op, actual, expected)
    raise RuleEvaluationError(
        leaf.rule_id,
        leaf.field,
        f"cannot apply {op!r} with {kind_of(expected)} {clip(expected, _CLIP)} to {got} {clip(actual, _CLIP)}",
    )


def _compare(op: str, actual: Any, expected: Any) -> bool:
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
    if op == "in":
        return actual in expected
    return actual not in expected  # not_in


def _list_contains(value: Any, items: Any) -> bool:
    """``contains`` on a list: some item of the value's kind equals it (``True`` is not ``1``)."""
    want = kind_of(value)
    return any(item == value and kind_of(item) == want for item in items)


def _is_mapping(value: Any) -> bool:
    """Whether a path can go through ``value``: any mapping, not only an exact ``dict``."""
    return isinstance(value, Mapping)


def _element_kind(values: Any) -> str:
    return kind_of(next(iter(values))) if values else "string"


_GLOBALS: dict[str, Any] = {
    "__builtins__": {"type": type, "str": str, "list": list, "dict": dict, "bool": bool},
    "_M": _MISSING,
    "_NUM": _NUMBER_TYPES,
    "_slow": _slow_path,
    "_has": _list_contains,
    "_map": _is_mapping,
}

_COMPARISON = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_TYPE_TEST = {
    "string": "type({v}) is str",
    "number": "type({v}) in _NUM",
    "bool": "type({v}) is bool",
}


class _Generator:
    """Walks one condition tree, collecting its shape key and constants, and (``emit``) its source.

    On a shape-cache hit only the constants are needed, so the walk runs without building any
    text; the source is generated on a miss, by a second walk that collects the same constants in
    the same order.
    """

    def __init__(self, rule_id: str, *, emit: bool) -> None:
        self.rule_id = rule_id
        self.emit = emit
        self.constants: list[Any] = []
        self.shape: list[Any] = []
        self._variables = 0

    def constant(self, value: Any) -> str:
        self.constants.append(value)
        return f"c{len(self.constants) - 1}" if self.emit else ""

    def variable(self) -> str:
        self._variables += 1
        return f"v{self._variables}" if self.emit else ""

    def expression(self, cond: Any) -> str:
        kind = type(cond)
        if kind is AllCondition or kind is AnyCondition:
            self.shape.append(kind)
            parts = [self.expression(child) for child in cond.conditions]
            self.shape.append(None)
            if not self.emit:
                return ""
            return "(" + (" and " if kind is AllCondition else " or ").join(parts) + ")"
        if kind is NotCondition:
            self.shape.append(kind)
            inner = self.expression(cond.condition)
            self.shape.append(None)
            return f"(not {inner})" if self.emit else ""
        if kind is Leaf:
            return self.leaf(cond)
        raise TypeError(f"not a condition: {cond!r}")  # pragma: no cover - models allow no other

    def leaf(self, leaf: Leaf) -> str:
        path = leaf.path
        op, value = leaf.op, leaf.value
        value_kind = _element_kind(value) if op in ("in", "not_in") else kind_of(value)
        self.shape.append((len(path), op, value_kind if leaf.has_value else "-"))
        emit = self.emit
        steps: list[str] = []
        holder = "event"
        for part in path[:-1]:
            name = self.constant(part)
            nested = self.variable()
            if emit:
                steps.append(f"(type({nested} := {holder}.get({name})) is dict or _map({nested}))")
            holder = nested
        key = self.constant(path[-1])
        compares = op != "exists" and not (op in ("eq", "ne") and value is None)
        if not emit:
            if compares:
                self.test(leaf, "", value_kind)  # collects the test's constants only
            return ""
        if op == "exists":
            steps.append(f"{key} in {holder}")
        elif op in ("eq", "ne") and value is None:
            v = self.variable()
            if op == "eq":
                steps.append(f"{holder}.get({key}, _M) is None")
            else:
                steps.append(f"({v} := {holder}.get({key}, _M)) is not None and {v} is not _M")
        else:
            v = self.variable()
            steps.append(f"({v} := {holder}.get({key})) is not None")
            steps.append(self.test(leaf, v, value_kind))
        return "(" + " and ".join(steps) + ")"

    def test(self, leaf: Leaf, v: str, value_kind: str) -> str:
        op, value = leaf.op, leaf.value
        info = self.constant(LeafInfo(self.rule_id, leaf.field, op, _frozen_value(value)))
        c = self.constant(_operand(op, value))
        if not self.emit:
            return ""
        otherwise = f"_slow({info}, {v})"
        if op in _COMPARISON:
            symbol = "is" if value_kind == "bool" and op == "eq" else _COMPARISON[op]
            symbol = "is not" if value_kind == "bool" and op == "ne" else symbol
            guard = _TYPE_TEST[value_kind].format(v=v)
            return f"({v} {symbol} {c} if {guard} else {otherwise})"
        if op in ("in", "not_in"):
            guard = _TYPE_TEST[value_kind].format(v=v)
            return f"({v} {'in' if op == 'in' else 'not in'} {c} if {guard} else {otherwise})"
        if op == "contains":
            if value_kind == "string":  # == between a string and any non-string is False
                return f"({c} in {v} if type({v}) is str or type({v}) is list else {otherwise})"
            # 1 == True == 1.0 in Python; the slower kind check runs only when `in` finds something
            return f"({c} in {v} and _has({c}, {v}) if type({v}) is list else {otherwise})"
        if op in ("starts_with", "ends_with"):
            method = "startswith" if op == "starts_with" else "endswith"
            return f"({v}.{method}({c}) if type({v}) is str else {otherwise})"
        if op == "matches":
            return f"({c}({v}) if type({v}) is str else {otherwise})"
        raise ValueError(f"unknown operator {op!r}")  # pragma: no cover


def _operand(op: str, value: Any) -> Any:
    """The constant a leaf's test compares with: a set for in/not_in, a search for matches."""
    if op in ("in", "not_in"):
        return frozenset(value)
    if op == "matches":
        return _regex.compile_search(value)
    return value


def _frozen_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_shape_cache: dict[tuple[Any, ...], Callable[..., Matcher]] = {}
_shape_lock = threading.Lock()


def compile_condition(condition: Any, rule_id: str = "?") -> Matcher:
    """Compile a condition model into a matcher ``event -> bool`` (``match_always`` for None)."""
    if condition is None:
        return match_always
    generator = _Generator(rule_id, emit=False)
    generator.expression(condition)
    shape = tuple(generator.shape)
    factory = _shape_cache.get(shape)
    if factory is None:
        source = _Generator(rule_id, emit=True)
        expression = source.expression(condition)
        factory = _build_factory(expression, len(source.constants))
        with _shape_lock:
            if len(_shape_cache) >= _SHAPE_CACHE_SIZE:
                _shape_cache.clear()
            _shape_cache[shape] = factory
    return factory(*generator.constants)


def _build_factory(expression: str, constants: int) -> Callable[..., Matcher]:
    names = ", ".join(f"c{i}" for i in range(constants))
    source = f"def factory({names}):\n    def match(event):\n        return {expression}\n    return match\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<rule_engine.evaluation.compiler>", "exec"), dict(_GLOBALS), namespace)
    factory: Callable[..., Matcher] = namespace["factory"]
    return factory
