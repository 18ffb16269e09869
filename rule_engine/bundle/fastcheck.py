"""The fast acceptor: one pass over the parsed document that says "certainly valid", or defers.

:func:`~rule_engine.bundle.models.parse_bundle` first parses the bytes once with the standard
library (duplicate keys refused by the object hook, ``NaN``/``Infinity`` literals refused) and
checks the document here against every rule the models' schema states: the keys each object may
and must have, the type and length of each field, id characters, field-path syntax, the operator
and the kind of value it takes. A document that passes is built into models directly (as the
trusted path does) and then walked for the limits like any other; a document that fails anything
here, or that this pass does not cover, is validated by the models as before, which reports every
problem with its JSON path. So this pass only ever *accepts*: its checks may be stricter than the
schema's (a stricter check only sends a valid document to the slower path), never looser.
``tests/test_fast_acceptor.py`` checks that what it accepts is what the models accept, built alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rule_engine.bundle.values import OPERATORS, unsafe_character, value_problem

__all__ = ["accepted_document"]

_BUNDLE_KEYS = frozenset({"bundle_id", "version", "description", "default", "on_error", "rules", "tests"})
_RULE_KEYS = frozenset({"id", "priority", "description", "agents", "flows", "when", "then"})
_OUTCOME_KEYS = frozenset({"decision", "reason", "params"})
_LEAF_KEYS = frozenset({"field", "op", "value"})
_TEST_KEYS = frozenset({"name", "event", "expect"})
_EXPECT_KEYS = frozenset({"decision", "rule_id"})
_OPERATORS = frozenset(OPERATORS)
_BUNDLE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# A \u escape of a UTF-16 surrogate: the models' parser refuses unpaired ones, the standard
# library's keeps them; any such escape (paired or not) goes to the models.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SCALARS = (str, int, float, bool, type(None))
_ORDERED = frozenset({"lt", "lte", "gt", "gte"})
_TEXT_OPS = frozenset({"starts_with", "ends_with"})


class _Defer(Exception):
    """The document is not certainly valid: let the models validate it."""


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built = dict(pairs)
    if len(built) != len(pairs):
        raise _Defer
    return built


def _refuse_constant(name: str) -> Any:
    raise _Defer


def accepted_document(raw: bytes) -> dict[str, Any] | None:
    """The parsed document of ``raw`` when it certainly satisfies the bundle schema, else None.

    ``raw`` has passed :func:`~rule_engine.bundle.jsontext.prechecked_bytes`. None means "validate
    with the models" (the document may still be valid); the limits walk is not done here.
    """
    if _SURROGATE_ESCAPE.search(raw) is not None:
        return None
    try:
        document: dict[str, Any] = json.loads(
            raw, object_pairs_hook=_pairs_without_duplicates, parse_constant=_refuse_constant
        )
        _Checker().bundle(document)
    except (_Defer, ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None
    return document


def _is_text(value: Any, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high


class _Checker:
    """One walk over the document; ``names`` collects every string the models check for unsafe characters."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def bundle(self, data: Any) -> None:
        if type(data) is not dict or not data.keys() <= _BUNDLE_KEYS:
            raise _Defer
        bundle_id, version = data["bundle_id"], data["version"]
        if type(bundle_id) is not str or _BUNDLE_ID.fullmatch(bundle_id) is None or not _is_text(version, 1, 64):
            raise _Defer
        names = self.names
        names.append(version)
        self.optional_text(data.get("description"))
        for key in ("default", "on_error"):
            outcome = data.get(key)
            if outcome is not None:
                self.outcome(outcome)
        rules = data["rules"]
        tests = data.get("tests", [])
        if type(rules) is not list or type(tests) is not list:
            raise _Defer
        for rule in rules:
            self.rule(rule)
        for test in tests:
            self.test(test)
        if unsafe_character("".join(names)) is not None:
            raise _Defer

    def optional_text(self, value: Any) -> None:
        if value is not None and type(value) is not str:
            raise _Defer

    def outcome(self, data: Any) -> None:
        if type(data) is not dict or not data.keys() <= _OUTCOME_KEYS:
            raise _Defer
        decision = data["decision"]
        if not _is_text(decision, 1, 128):
            raise _Defer
        self.names.append(decision)
        self.optional_text(data.get("reason"))
        params = data.get("params")
        if params is not None and type(params) is not dict:
            raise _Defer

    def rule(self, data: Any) -> None:
        if type(data) is not dict or not data.keys() <= _RULE_KEYS:
            raise _Defer
        rule_id = data["id"]
        if not _is_text(rule_id, 1, 128) or not rule_id.strip():
            raise _Defer
        names = self.names
        names.append(rule_id)
        if "priority" in data and type(data["priority"]) is not int:
            raise _Defer
        self.optional_text(data.get("description"))
        for key in ("agents", "flows"):
            scope = data.get(key)
            if scope is None:
                continue
            if type(scope) is not list or not scope:
                raise _Defer
            for name in scope:
                if not _is_text(name, 1, 128):
                    raise _Defer
            names.extend(scope)
        when = data.get("when")
        if when is not None:
            self.condition(when)
        self.outcome(data["then"])

    def condition(self, data: Any) -> None:
        if type(data) is not dict:
            raise _Defer
        if len(data) == 1:
            children = data.get("all")
            if children is None:
                children = data.get("any")
            if children is not None:
                if type(children) is not list or not children:
                    raise _Defer
                for child in children:
                    self.condition(child)
                return
            if "not" in data:
                self.condition(data["not"])
                return
            if "all" in data or "any" in data:  # null: not a list
                raise _Defer
        self.leaf(data)

    def leaf(self, data: dict[str, Any]) -> None:
        if not data.keys() <= _LEAF_KEYS:
            raise _Defer
        path, op = data["field"], data["op"]
        if type(path) is not str or not path or path[0] == "." or path[-1] == "." or ".." in path:
            raise _Defer
        if type(op) is not str or op not in _OPERATORS:
            raise _Defer
        has_value = "value" in data
        value = data.get("value")
        kind = type(value)
        if has_value and kind in _SCALARS and op != "exists" and op != "matches":
            # the common cases of value_problem, without its messages
            if op == "eq" or op == "ne":
                return
            if op in _ORDERED and kind is not bool and value is not None:
                return
            if op in _TEXT_OPS and kind is str:
                return
        if value_problem(op, value, has_value) is not None:
            raise _Defer

    def test(self, data: Any) -> None:
        if type(data) is not dict or data.keys() != _TEST_KEYS:
            raise _Defer
        name, event, expect = data["name"], data["event"], data["expect"]
        if not _is_text(name, 1, 256) or type(event) is not dict:
            raise _Defer
        if type(expect) is not dict or not expect.keys() <= _EXPECT_KEYS:
            raise _Defer
        decision = expect["decision"]
        if type(decision) is not str or not decision:
            raise _Defer
        self.optional_text(expect.get("rule_id"))
        self.names.extend((name, decision))
