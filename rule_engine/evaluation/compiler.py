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

import functools
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine.bundle import regex as _regex
from rule_engine.bundle.models import AllCondition, AnyCondition, Leaf, NotCondition, kind_of
from rule_engine.bundle.values import clip
from rule_engine.errors import RuleEvaluationError
from rule_engine.evaluation.codecache import CodeCache

__all__ = [
    "Matcher",
    "cached_source_chars",
    "clear_shape_cache",
    "compile_condition",
    "match_always",
    "use_code_cache",
]

Matcher = Callable[[Mapping[str, Any]], bool]

_MISSING: Any = object()
_CLIP = 40  # width of a value quoted in an evaluation error (bundle messages use 60)
_NUMBER_TYPES = frozenset({int, float})


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
    if got == "number" and want == "number" and op != "contains" and not _finite(actual):
        raise RuleEvaluationError(
            leaf.rule_id,
            leaf.field,
            f"cannot apply {op!r} with number {clip(expected, _CLIP)} to {clip(actual, _CLIP)}: not a finite number",
        )
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
            search, limit = _slow_search(expected)
            _check_match_text(leaf.rule_id, leaf.field, text, limit)
            return search(text)
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


def _finite(number: Any) -> bool:
    """Whether a number is finite (NaN and the infinities are not JSON numbers; huge ints are)."""
    try:
        return isinstance(number, int) or math.isfinite(number)
    except (TypeError, ValueError, OverflowError):
        return False


@functools.lru_cache(maxsize=64)
def _slow_search(pattern: str) -> tuple[Callable[[str], bool], int]:
    """The search and text limit of a pattern, for the slow path (a ``str`` subclass in an event)."""
    return _regex.compile_search(pattern), _regex.text_limit(pattern)


def _check_match_text(rule_id: str, field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise RuleEvaluationError(
            rule_id,
            field,
            f"'matches' on a string of {len(text)} characters, over this pattern's limit of {limit}",
        )


def _match_leaf(pattern: str, rule_id: str, field: str) -> Callable[[str], bool]:
    """The ``matches`` test of one leaf: RE2 search, on strings of at most ``text_limit`` characters."""
    search = _regex.compile_search(pattern)
    limit = _regex.text_limit(pattern)

    def matches(text: str) -> bool:
        if len(text) > limit:
            _check_match_text(rule_id, field, text, limit)
        return search(text)

    return matches


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
    "__builtins__": {"type": type, "str": str, "list": list, "dict": dict, "bool": bool, "int": int, "float": float},
    "_M": _MISSING,
    "_NUM": _NUMBER_TYPES,
    "_slow": _slow_path,
    "_has": _list_contains,
    "_map": _is_mapping,
}

_COMPARISON = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_TYPE_TEST = {
    "string": "type({v}) is str",
    # a float is taken by the fast path only when finite (v - v is 0.0 for those, NaN otherwise);
    # NaN and the infinities go to the slow path, which raises (docs/bundle-format.md)
    "number": "(type({v}) is int or type({v}) is float and {v} - {v} == 0.0)",
    "bool": "type({v}) is bool",
}


class _Generator:
    """Walks one condition tree, collecting its shape key and constants, and (``emit``) its source.

    On a shape-cache hit only the constants are needed, so the walk runs without building any
    text; the source is generated on a miss, by a second walk that collects the same constants in
    the same order.
    """

    def __init__(self, rule_id: str, *, emit: bool, parts: list[Matcher] | None = None) -> None:
        self.rule_id = rule_id
        self.emit = emit
        self.constants: list[Any] = []
        self.shape: list[Any] = []
        self._variables = 0
        # Sub-matchers of the parts of a large condition compiled on their own (see ``root``):
        # made by the first walk, reused in the same order by the emitting walk.
        self.parts: list[Matcher] = [] if parts is None else parts
        self._next_part = 0

    def root(self, cond: Any) -> str:
        """The expression of a whole condition, with its large parts compiled as separate matchers.

        A condition of at most ``_MAX_NODES`` nodes is one expression. A larger one keeps its top
        level here and compiles each child that does not fit the remaining budget on its own (and
        so on down), and a list of more than ``_MAX_ITEMS`` conditions is split into groups: every
        generated function stays small, so compiling a rule costs time linear in its size
        (Python's ``compile`` is superlinear on one huge expression).
        """
        if _size(cond) <= _MAX_NODES:
            return self.expression(cond)
        kind = type(cond)
        if kind is NotCondition:
            self.shape.append(kind)
            inner = self.part(cond.condition)
            self.shape.append(None)
            return f"(not {inner})" if self.emit else ""
        conjunction, children = _items(cond)
        children = _grouped(conjunction, children)
        budget = _MAX_NODES
        parts: list[str] = []
        self.shape.append(AllCondition if conjunction else AnyCondition)
        for child in children:
            size = _size(child)
            if size <= budget:
                budget -= size
                parts.append(self.expression(child))
            else:
                parts.append(self.part(child))
        self.shape.append(None)
        if not self.emit:
            return ""
        return "(" + (" and " if conjunction else " or ").join(parts) + ")"

    def part(self, cond: Any) -> str:
        """A call of ``cond`` compiled as its own matcher (in the shape it stands for one opaque sub-condition)."""
        self.shape.append(_PART)
        if self.emit:
            matcher = self.parts[self._next_part]
            self._next_part += 1
        else:
            matcher = _compile(cond, self.rule_id)
            self.parts.append(matcher)
        name = self.constant(matcher)
        return f"{name}(event)" if self.emit else ""

    def constant(self, value: Any) -> str:
        self.constants.append(value)
        return f"c{len(self.constants) - 1}" if self.emit else ""

    def variable(self) -> str:
        self._variables += 1
        return f"v{self._variables}" if self.emit else ""

    def expression(self, cond: Any) -> str:
        kind = type(cond)
        if kind is AllCondition or kind is AnyCondition or kind is _Group:
            conjunction, children = _items(cond)
            self.shape.append(AllCondition if conjunction else AnyCondition)
            parts = [self.expression(child) for child in children]
            self.shape.append(None)
            if not self.emit:
                return ""
            return "(" + (" and " if conjunction else " or ").join(parts) + ")"
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
            # The type guard reads the value (its first ``type(v)`` is evaluated first) and a
            # missing or null value fails the guard, then ``v is not None`` before the slow path:
            # the common case (a value of the expected type) pays no separate None test.
            v = self.variable()
            test = self.test(leaf, v, value_kind)
            steps.append(test.replace(f"type({v})", f"type({v} := {holder}.get({key}))", 1))
        return "(" + " and ".join(steps) + ")"

    def test(self, leaf: Leaf, v: str, value_kind: str) -> str:
        op, value = leaf.op, leaf.value
        info = self.constant(LeafInfo(self.rule_id, leaf.field, op, _frozen_value(value)))
        c = self.constant(_operand(op, value, self.rule_id, leaf.field))
        if not self.emit:
            return ""
        otherwise = f"({v} is not None and _slow({info}, {v}))"
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


def _operand(op: str, value: Any, rule_id: str, field: str) -> Any:
    """The constant a leaf's test compares with: a set for in/not_in, a search for matches."""
    if op in ("in", "not_in"):
        return frozenset(value)
    if op == "matches":
        return _match_leaf(value, rule_id, field)
    return value


def _frozen_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


#: The most nodes (leaves, all/any/not) one generated function holds; larger parts get their own.
_MAX_NODES = 128
#: The most conditions of one all/any list one generated function joins; longer lists are grouped.
_MAX_ITEMS = 64
#: The shape cache holds at most this many characters of generated source (about 10x that in
#: memory for the code objects), and never one factory larger than a tenth of it.
_SHAPE_CACHE_CHARS = 1 << 20
_PART = "part"


@dataclass(frozen=True, slots=True)
class _Group:
    """A slice of a long all/any list, compiled as one part (``and``/``or`` are associative)."""

    conjunction: bool
    conditions: tuple[Any, ...]


def _items(cond: Any) -> tuple[bool, tuple[Any, ...]]:
    """(is it an ``all``, its conditions) of an all/any condition or group."""
    if type(cond) is _Group:
        return cond.conjunction, cond.conditions
    return type(cond) is AllCondition, cond.conditions


def _grouped(conjunction: bool, children: tuple[Any, ...]) -> tuple[Any, ...]:
    """``children`` in groups of at most ``_MAX_ITEMS`` (groups of groups while still too many)."""
    while len(children) > _MAX_ITEMS:
        children = tuple(_Group(conjunction, children[i : i + _MAX_ITEMS]) for i in range(0, len(children), _MAX_ITEMS))
    return children


def _size(cond: Any) -> int:
    """Nodes in a condition tree (memoised on the tree's objects for the duration of a compile)."""
    kind = type(cond)
    if kind is Leaf:
        return 1
    cached = _sizes.get(id(cond))
    if cached is not None and cached[0] is cond:
        return cached[1]
    children = (cond.condition,) if kind is NotCondition else _items(cond)[1]
    size = 1 + sum(_size(child) for child in children)
    _sizes[id(cond)] = (cond, size)
    return size


_sizes: dict[int, tuple[Any, int]] = {}


_shape_cache: dict[tuple[Any, ...], Callable[..., Matcher]] = {}
_shape_lock = threading.Lock()
_cached_chars = 0  # characters of source behind the factories in _shape_cache


def _remember(shape: tuple[Any, ...], factory: Callable[..., Matcher], chars: int) -> None:
    """Keep a factory for its shape, within ``_SHAPE_CACHE_CHARS`` of source in all.

    A factory over a tenth of the budget is not kept (its table owns it and frees it with the
    table); when the budget would be exceeded the cache starts over.
    """
    global _cached_chars
    if chars > _SHAPE_CACHE_CHARS // 10:
        return
    with _shape_lock:
        if _cached_chars + chars > _SHAPE_CACHE_CHARS:
            _shape_cache.clear()
            _cached_chars = 0
        if shape not in _shape_cache:
            _shape_cache[shape] = factory
            _cached_chars += chars


def clear_shape_cache() -> None:
    """Forget every cached factory (benchmarks use it to time cold compiles)."""
    global _cached_chars
    with _shape_lock:
        _shape_cache.clear()
        _cached_chars = 0


def cached_source_chars() -> int:
    """Characters of generated source behind the cached factories (at most ``_SHAPE_CACHE_CHARS``)."""
    return _cached_chars


def compile_condition(condition: Any, rule_id: str = "?") -> Matcher:
    """Compile a condition model into a matcher ``event -> bool`` (``match_always`` for None)."""
    if condition is None:
        return match_always
    try:
        return _compile(condition, rule_id)
    finally:
        _sizes.clear()


def _compile(condition: Any, rule_id: str) -> Matcher:
    generator = _Generator(rule_id, emit=False)
    generator.root(condition)
    shape = tuple(generator.shape)
    factory = _shape_cache.get(shape)
    if factory is None:
        source = _Generator(rule_id, emit=True, parts=generator.parts)
        expression = source.root(condition)
        factory, chars = _build_factory(expression, len(source.constants))
        _remember(shape, factory, chars)
    return factory(*generator.constants)


_code_cache: CodeCache | None = None


def use_code_cache(cache: CodeCache | None) -> None:
    """Read and store generated code in ``cache`` (None: compile every new shape; see codecache.py)."""
    global _code_cache
    _code_cache = cache


def _build_factory(expression: str, constants: int) -> tuple[Callable[..., Matcher], int]:
    names = ", ".join(f"c{i}" for i in range(constants))
    source = f"def factory({names}):\n    def match(event):\n        return {expression}\n    return match\n"
    namespace: dict[str, Any] = {}
    cache = _code_cache
    code = cache.load(source) if cache is not None else None
    if code is None:
        code = compile(source, "<rule_engine.evaluation.compiler>", "exec")
        if cache is not None:
            cache.store(source, code)
    exec(code, dict(_GLOBALS), namespace)
    factory: Callable[..., Matcher] = namespace["factory"]
    return factory, len(source)
