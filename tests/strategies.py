"""Hypothesis strategies: arbitrary JSON, bundle-shaped documents, conditions and events."""

from __future__ import annotations

import json
from collections import OrderedDict
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from hypothesis import strategies as st

from rule_engine.bundle.models import OPERATORS
from rule_engine.control.strategies import ABTest, BlueGreen, Canary, Scheduled

JSON = Any

# --- arbitrary JSON -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # includes NaN and the infinities: json.dumps writes them as NaN / Infinity
    | st.text(max_size=20)
)

json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

# Keys a bundle really has, so that generated documents get past the first unknown-key check.
_KEYS = [
    *("bundle_id", "version", "description", "default", "on_error", "rules", "tests"),
    *("id", "priority", "agents", "flows", "when", "then", "decision", "reason", "params"),
    *("all", "any", "not", "field", "op", "value", "name", "event", "expect", "rule_id"),
]

bundle_like_values = st.recursive(
    scalars | st.sampled_from([*OPERATORS, "gateway", "a.b", "allow", ""]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=15,
)

bundle_like_documents = st.dictionaries(st.sampled_from(_KEYS), bundle_like_values, max_size=8).map(
    lambda doc: {"bundle_id": "b", "version": "1", "rules": [], **doc}
)

unicode_text = st.text(
    st.characters(codec=None, exclude_categories=()) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    max_size=60,
)


def dumps(value: JSON, **kwargs: Any) -> str:
    """JSON text for a generated value (NaN and Infinity written as JavaScript literals)."""
    return json.dumps(value, allow_nan=True, **kwargs)


# --- JSON with repeatable keys, for mutating documents at the text level -------------------------


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its list of (key, value) pairs, so it can hold a key twice."""


def to_pairs(value: JSON) -> Any:
    """Turn parsed JSON into nested :class:`Pairs` (objects) and lists (arrays)."""
    if isinstance(value, dict):
        return Pairs((k, to_pairs(v)) for k, v in value.items())
    if isinstance(value, list):
        return [to_pairs(v) for v in value]
    return value


def dump_pairs(value: Any) -> str:
    """Serialise a :class:`Pairs` tree, writing repeated keys as they are."""
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{dump_pairs(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump_pairs(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)


def containers(value: Any) -> list[Any]:
    """Every object and array in a :class:`Pairs` tree, outermost first."""
    found = [value] if isinstance(value, list) else []
    children = [v for _, v in value] if isinstance(value, Pairs) else value if isinstance(value, list) else []
    for child in children:
        found.extend(containers(child))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn, document: JSON) -> str:
    """The document's text after 1-3 random edits: drop, duplicate or retype a key, or retype an item."""
    tree = to_pairs(document)
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(containers(tree)))
        if not target:
            continue
        index = draw(st.integers(0, len(target) - 1))
        edit = draw(st.sampled_from(["drop", "duplicate", "retype"]))
        if edit == "drop":
            del target[index]
        elif edit == "duplicate" and isinstance(target, Pairs):
            key, value = target[index]
            replacement = draw(st.just(value) | bundle_like_values.map(to_pairs))
            target.insert(draw(st.integers(0, len(target))), (key, replacement))
        else:
            replacement = to_pairs(draw(bundle_like_values))
            target[index] = (target[index][0], replacement) if isinstance(target, Pairs) else replacement
    return dump_pairs(tree)


# --- conditions -----------------------------------------------------------------------------------

NAMES = ("a", "b", "c")
_short_text = st.text(alphabet="abAB", max_size=3)
_numbers = (
    st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.sampled_from([0.5, -0.0])
)
_booleans = st.booleans()
_patterns = st.sampled_from(["a", "^a", "b$", "a|B", "(?i)ab", "a+b", "[ab]A", "^$", "\\d", "."])

field_paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(".".join)


def _leaf(op: str, value: st.SearchStrategy[Any] | None) -> st.SearchStrategy[JSON]:
    if value is None:
        return st.builds(lambda field: {"field": field, "op": op}, field_paths)
    return st.builds(lambda field, v: {"field": field, "op": op, "value": v}, field_paths, value)


_one_kind_lists = (
    st.lists(_short_text, min_size=1, max_size=4)
    | st.lists(_numbers, min_size=1, max_size=4)
    | st.lists(_booleans, min_size=1, max_size=2)
)

leaves = st.one_of(
    *(_leaf(op, _short_text | _numbers | _booleans | st.none()) for op in ("eq", "ne")),
    *(_leaf(op, _short_text | _numbers) for op in ("lt", "lte", "gt", "gte")),
    *(_leaf(op, _one_kind_lists) for op in ("in", "not_in")),
    _leaf("contains", _short_text | _numbers | _booleans),
    *(_leaf(op, _short_text) for op in ("starts_with", "ends_with")),
    _leaf("matches", _patterns),
    _leaf("exists", None),
)

conditions = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, min_size=1, max_size=3).map(lambda cs: {"all": cs})
        | st.lists(children, min_size=1, max_size=3).map(lambda cs: {"any": cs})
        | children.map(lambda c: {"not": c})
    ),
    max_leaves=6,
)

# --- events ---------------------------------------------------------------------------------------


class TextSubclass(str):
    """A str subclass, as an application might put into an event (takes the compiler's slow path)."""


class Level(IntEnum):
    """An IntEnum: a number by kind, not of the exact type int."""

    LOW = 1
    HIGH = 2


event_scalars = (
    st.none() | _short_text | _numbers | _booleans | _short_text.map(TextSubclass) | st.sampled_from(list(Level))
)

_event_lists = st.lists(event_scalars, max_size=3)


def _mapping_kinds(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return children | children.map(OrderedDict) | children.map(MappingProxyType)


event_values = st.recursive(
    event_scalars | _event_lists,
    lambda children: _mapping_kinds(st.dictionaries(st.sampled_from(NAMES), children, max_size=3)),
    max_leaves=10,
)

events = st.dictionaries(st.sampled_from(NAMES), event_values, max_size=3)


# --- rollout strategies ---------------------------------------------------------------------------


@st.composite
def canaries(draw: st.DrawFn) -> Canary:
    """Any valid canary: strictly increasing stages with at most two decimals, ending at 100."""
    inner = draw(st.lists(st.integers(min_value=1, max_value=9_999), unique=True, max_size=8))
    stages = [bp / 100 for bp in sorted(inner)] + [100]
    return Canary(stages, draw(st.floats(min_value=0, max_value=1e6)))


rollout_strategies = st.one_of(
    st.just(BlueGreen()),
    canaries(),
    st.builds(
        ABTest,
        st.integers(min_value=1, max_value=9_999).map(lambda bp: bp / 10_000),
        st.floats(min_value=0.001, max_value=1e7),
    ),
    st.builds(Scheduled, st.floats(min_value=0, max_value=4e9)),
)
