"""The trusted path: models built from a canonical text that was validated once, identified by its digest.

A version's bundle is validated in full when it is prepared (schema, duplicate keys, limits, its
own tests) and stored as its canonical text next to the sha256 digest of that text. A process that
reads it back (a follower, a rollback, ``bundle_of``) and finds ``sha256(text) == digest`` holds
exactly the text that was validated, so it builds the models directly from the parsed document:
no second validation, no duplicate-key pass, no canonical dump. A text whose digest differs is
refused here (:class:`~rule_engine.errors.BundleValidationError`) and never built.

The models built here equal the validated ones (``tests/test_trusted_bundle.py`` checks every
field, ``model_fields_set`` included, since ``Leaf.has_value`` and the canonical dump read it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from rule_engine.bundle.models import (
    AllCondition,
    AnyCondition,
    BundleTest,
    Leaf,
    NotCondition,
    Outcome,
    Rule,
    RuleBundle,
    TestExpectation,
    gc_paused,
)
from rule_engine.errors import BundleValidationError, Problem

__all__ = ["parse_trusted", "text_digest"]

_set = object.__setattr__


def text_digest(text: str | bytes) -> str:
    """sha256 (hex) of ``text`` as UTF-8: a bundle's digest when ``text`` is its canonical form."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def parse_trusted(text: str | bytes | bytearray, digest: str) -> RuleBundle:
    """The bundle whose canonical text is ``text``, after checking ``sha256(text) == digest``.

    Raises :class:`BundleValidationError` when the digest differs (the text is not the one that
    was validated) or the text is not a JSON object of the bundle's shape.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    actual = hashlib.sha256(raw).hexdigest()
    if actual != digest:
        raise BundleValidationError(
            [Problem("$", f"text has digest {actual}, not the trusted digest {digest}: it was not validated")]
        )
    try:
        with gc_paused():
            document = json.loads(raw)
            bundle = _bundle(document)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise BundleValidationError([Problem("$", f"trusted text is not a bundle: {type(exc).__name__}")]) from None
    canonical = raw.decode("utf-8") if not isinstance(text, str) else text
    bundle.__dict__["canonical"] = canonical
    bundle.__dict__["digest"] = digest
    return bundle


_new = object.__new__
# BaseModel's own slot descriptors: setting through them skips the generic attribute lookup
# (and the frozen models' __setattr__, which refuses any assignment).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _built(model: type[BaseModel], fields: dict[str, Any], given: set[str]) -> Any:
    """What ``model.model_construct(_fields_set=given, **fields)`` makes, without its per-field alias search.

    ``fields`` holds every field of ``model`` in declaration order (the order validation fills
    ``__dict__`` in); a required field missing from the document raised KeyError before this.
    """
    made = _new(model)
    _set_dict(made, fields)
    _set_fields_set(made, given)
    _set_extra(made, None)
    _set_private(made, None)
    return made


def _outcome(data: dict[str, Any]) -> Outcome:
    fields = {"decision": data["decision"], "reason": data.get("reason"), "params": data.get("params")}
    built: Outcome = _built(Outcome, fields, set(data))
    return built


_CONDITIONS = {"conditions"}
_CONDITION = {"condition"}


def _condition(data: dict[str, Any]) -> Any:
    if len(data) == 1:
        children = data.get("all")
        if children is not None:
            return _built(AllCondition, {"conditions": tuple(map(_condition, children))}, set(_CONDITIONS))
        children = data.get("any")
        if children is not None:
            return _built(AnyCondition, {"conditions": tuple(map(_condition, children))}, set(_CONDITIONS))
        inner = data.get("not")
        if inner is not None:
            return _built(NotCondition, {"condition": _condition(inner)}, set(_CONDITION))
    fields = {"field": data["field"], "op": data["op"], "value": data.get("value")}
    return _built(Leaf, fields, set(data))


def _names(data: dict[str, Any], name: str) -> tuple[str, ...] | None:
    names = data.get(name)
    return tuple(names) if names is not None else None


def _rule(data: dict[str, Any]) -> Rule:
    when = data.get("when")
    fields = {
        "id": data["id"],
        "priority": data.get("priority", 0),
        "description": data.get("description"),
        "agents": _names(data, "agents"),
        "flows": _names(data, "flows"),
        "when": _condition(when) if when is not None else None,
        "then": _outcome(data["then"]),
    }
    built: Rule = _built(Rule, fields, set(data))
    return built


def _test(data: dict[str, Any]) -> BundleTest:
    expect = data["expect"]
    expectation = _built(
        TestExpectation, {"decision": expect["decision"], "rule_id": expect.get("rule_id")}, set(expect)
    )
    fields = {"name": data["name"], "event": data["event"], "expect": expectation}
    built: BundleTest = _built(BundleTest, fields, set(data))
    return built


def _optional_outcome(data: dict[str, Any], name: str) -> Outcome | None:
    outcome = data.get(name)
    return _outcome(outcome) if outcome is not None else None


def _bundle(data: dict[str, Any]) -> RuleBundle:
    fields = {
        "bundle_id": data["bundle_id"],
        "version": data["version"],
        "description": data.get("description"),
        "default": _optional_outcome(data, "default"),
        "on_error": _optional_outcome(data, "on_error"),
        "rules": tuple(map(_rule, data["rules"])),
        "tests": tuple(map(_test, data.get("tests", ()))),
    }
    built: RuleBundle = _built(RuleBundle, fields, set(data))
    return built
