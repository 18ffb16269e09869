"""The compiled matchers agree with a plain reference interpreter written from the spec."""

from __future__ import annotations

from collections import OrderedDict
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import example, given
from pydantic import TypeAdapter

from rule_engine.bundle.models import Condition
from rule_engine.errors import RuleEvaluationError
from rule_engine.evaluation.compiler import compile_condition
from tests.reference import Mismatch, reference_match
from tests.strategies import Level, TextSubclass, conditions, events

_CONDITION = TypeAdapter(Condition)


def _outcome(function: Any, *args: Any) -> object:
    """True/False, or the string "raises" when the call raises an evaluation error."""
    try:
        return bool(function(*args))
    except (RuleEvaluationError, Mismatch):
        return "raises"


def _both(condition_json: dict[str, Any], event: dict[str, Any]) -> tuple[object, object]:
    condition = _CONDITION.validate_python(condition_json)
    compiled = compile_condition(condition, "r1")
    return _outcome(compiled, event), _outcome(reference_match, condition, event)


@given(conditions, events)
@example({"field": "a", "op": "contains", "value": True}, {"a": [1]})
@example({"field": "a", "op": "contains", "value": 1}, {"a": [True, 1.0]})
@example({"field": "a.b", "op": "eq", "value": "x"}, {"a": OrderedDict(b="x")})
@example({"field": "a.b", "op": "exists"}, {"a": MappingProxyType({"b": None})})
@example({"field": "a", "op": "eq", "value": None}, {})
@example({"not": {"field": "a.b", "op": "ne", "value": None}}, {"a": "text"})
def test_compiled_matcher_agrees_with_reference(condition_json: dict[str, Any], event: dict[str, Any]) -> None:
    """For any condition and event, the compiled matcher gives the reference's answer, or both raise."""
    compiled, reference = _both(condition_json, event)
    assert compiled == reference, (condition_json, event)


@pytest.mark.parametrize(
    ("condition", "event", "expected"),
    [
        ({"field": "a", "op": "eq", "value": None}, {}, False),
        ({"field": "a", "op": "eq", "value": None}, {"a": None}, True),
        ({"field": "a", "op": "ne", "value": None}, {}, False),
        ({"field": "a", "op": "ne", "value": None}, {"a": 0}, True),
        ({"field": "a", "op": "exists"}, {"a": None}, True),
        ({"field": "a.b", "op": "exists"}, {"a": [{"b": 1}]}, False),
        ({"field": "a", "op": "ne", "value": "x"}, {}, False),
        ({"field": "a", "op": "not_in", "value": ["x"]}, {"a": None}, False),
        ({"field": "a", "op": "eq", "value": 3}, {"a": 3.0}, True),
        ({"field": "a", "op": "eq", "value": 1}, {"a": True}, "raises"),
        ({"field": "a", "op": "in", "value": ["KP"]}, {"a": 408}, "raises"),
        ({"field": "a", "op": "contains", "value": "vip"}, {"a": ["vip", 3]}, True),
        ({"field": "a", "op": "contains", "value": 3}, {"a": "abc3"}, "raises"),
        ({"field": "a", "op": "contains", "value": True}, {"a": [1, "x"]}, False),
        ({"field": "a", "op": "matches", "value": "bot"}, {"a": ["bot"]}, "raises"),
        ({"field": "a", "op": "starts_with", "value": "ab"}, {"a": TextSubclass("abc")}, True),
        ({"field": "a", "op": "gte", "value": 2}, {"a": Level.HIGH}, True),
        ({"field": "a.b", "op": "eq", "value": 1}, {"a": OrderedDict(b=1)}, True),
    ],
)
def test_documented_semantics(condition: dict[str, Any], event: dict[str, Any], expected: object) -> None:
    """The compiler gives the documented answer for missing, null, mismatched and subclassed values."""
    compiled, reference = _both(condition, event)
    assert compiled == expected
    assert reference == expected
