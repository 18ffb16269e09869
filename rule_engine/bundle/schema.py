"""The JSON Schema (draft 2020-12) of rule bundles, for editors and other tools.

The schema is derived from the pydantic models in :mod:`rule_engine.bundle.models` and then tightened
with what the models check in code: the value each operator takes, field-path syntax, string
limits. It describes the shape of a bundle; the validator also checks what a schema cannot say
(regular-expression syntax, duplicate rule ids and test names, nesting depth, duplicate JSON keys,
integers written as ``1.0``) and runs the bundle's tests, so a document the schema accepts can
still be rejected by :func:`rule_engine.bundle.models.load_bundle`.

``docs/bundle.schema.json`` is generated from this module; regenerate it with::

    python -m rule_engine.bundle.schema > docs/bundle.schema.json
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

from rule_engine.bundle.models import DEFAULT_LIMITS, OPERATORS, RuleBundle

__all__ = ["SCHEMA_ID", "bundle_json_schema", "main"]

SCHEMA_ID = "https://rule-engine.invalid/schemas/bundle.schema.json"

JSONSchema = dict[str, Any]

_DESCRIPTIONS = {
    "RuleBundle": "A rule bundle: a versioned set of rules with a default decision and its own tests.",
    "Rule": "One rule: the agents and flows it applies to, when it matches, and what it decides.",
    "Outcome": "A decision object: the decision string, an optional reason and optional parameters.",
    "Condition": "A condition: exactly one of {all: [...]}, {any: [...]}, {not: ...} or a leaf {field, op, value}.",
    "AllCondition": "True when every condition in the list is true (left to right, stopping at the first false).",
    "AnyCondition": "True when at least one condition in the list is true (left to right, stopping at the first true).",
    "NotCondition": "True when the condition is false.",
    "Leaf": "Compares one event field with a constant. 'value' is required for every operator but 'exists'.",
    "BundleTest": "An example event and the decision the bundle must give for it.",
    "TestExpectation": "The expected decision and, optionally, the id of the rule that must give it.",
}

_PROPERTY_DESCRIPTIONS = {
    ("RuleBundle", "bundle_id"): "Name of the bundle; versions of one policy share it.",
    ("RuleBundle", "version"): "Free-form version label (not parsed or ordered).",
    ("RuleBundle", "default"): "The decision when no rule matches (decision 'skip' when absent).",
    ("RuleBundle", "on_error"): "The decision when an event cannot be evaluated (decision 'error' when absent).",
    ("RuleBundle", "tests"): "Example events with their expected decisions; any failure rejects the bundle.",
    ("Rule", "id"): "Unique, non-blank rule id, reported as the matching rule.",
    ("Rule", "priority"): "Higher priorities are tried first; equal priorities keep file order. A JSON integer.",
    ("Rule", "agents"): "The rule applies only to events whose agent_id is listed. Absent: every agent.",
    ("Rule", "flows"): "The rule applies only to events whose flow_id is listed. Absent: every flow.",
    ("Rule", "when"): "The condition. Absent: the rule matches every event it applies to.",
    ("Leaf", "field"): "Dotted path into the event, for example geo.country; no empty segments.",
    ("Outcome", "params"): "Any JSON object, returned with the decision.",
    ("BundleTest", "event"): "The event to evaluate, including its agent_id and flow_id.",
}

_MAX_STRING = DEFAULT_LIMITS.max_string
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_NON_EMPTY_LIST_OF_ONE_KIND = {
    "type": "array",
    "minItems": 1,
    "maxItems": DEFAULT_LIMITS.max_list,
    "anyOf": [
        {"items": {"type": "string", "maxLength": _MAX_STRING}},
        {"items": {"type": "number"}},
        {"items": {"type": "boolean"}},
    ],
}
_VALUE_BY_OPERATOR: dict[tuple[str, ...], JSONSchema] = {
    ("eq", "ne"): _SCALAR,
    ("lt", "lte", "gt", "gte"): {"type": ["number", "string"]},
    ("in", "not_in"): _NON_EMPTY_LIST_OF_ONE_KIND,
    ("contains",): {"type": ["string", "number", "boolean"]},
    ("starts_with", "ends_with"): {"type": "string"},
    ("matches",): {"type": "string", "maxLength": DEFAULT_LIMITS.max_regex, "description": "An RE2 pattern."},
}


def bundle_json_schema() -> JSONSchema:
    """The JSON Schema of a rule bundle document (a new dict on every call)."""
    raw = RuleBundle.model_json_schema(by_alias=True)
    defs: dict[str, JSONSchema] = raw.pop("$defs")
    defs["RuleBundle"] = raw
    for name, definition in defs.items():
        _tidy(definition)
        definition["description"] = _DESCRIPTIONS[name]
        for (owner, prop), text in _PROPERTY_DESCRIPTIONS.items():
            if owner == name:
                definition["properties"][prop]["description"] = text
    _replace_condition_unions(defs, {"$ref": "#/$defs/Condition"})
    defs["Condition"] = {
        "description": _DESCRIPTIONS["Condition"],
        "oneOf": [{"$ref": f"#/$defs/{kind}"} for kind in ("AllCondition", "AnyCondition", "NotCondition", "Leaf")],
    }
    _tighten(defs)
    root = defs.pop("RuleBundle")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Rule bundle",
        **root,
        "$defs": dict(sorted(defs.items())),
    }


def _tidy(node: Any) -> None:
    """Drop pydantic's generated titles and ``default: null`` noise, recursively."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            for prop in properties.values():
                prop.pop("title", None)
                if prop.get("default", ...) is None:
                    del prop["default"]
        node.pop("title", None)
        for value in node.values():
            _tidy(value)
    elif isinstance(node, list):
        for item in node:
            _tidy(item)


def _replace_condition_unions(node: Any, condition_ref: JSONSchema) -> None:
    """Point every inline four-way condition union at the shared ``Condition`` definition."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and _is_condition_union(value):
                extra = {k: v for k, v in value.items() if k != "oneOf"}
                node[key] = {**condition_ref, **extra}
            else:
                _replace_condition_unions(value, condition_ref)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, dict) and _is_condition_union(item) and len(item) == 1:
                node[index] = dict(condition_ref)
            else:
                _replace_condition_unions(item, condition_ref)


def _is_condition_union(node: JSONSchema) -> bool:
    refs = [option.get("$ref") for option in node.get("oneOf", ()) if isinstance(option, dict)]
    return sorted(str(ref) for ref in refs) == [
        "#/$defs/AllCondition",
        "#/$defs/AnyCondition",
        "#/$defs/Leaf",
        "#/$defs/NotCondition",
    ]


def _tighten(defs: dict[str, JSONSchema]) -> None:
    """Add what the models check in code (so pydantic cannot export it)."""
    leaf = defs["Leaf"]
    leaf["properties"]["field"].update(maxLength=_MAX_STRING, pattern=r"^[^.]+(\.[^.]+)*$")
    leaf["properties"]["op"] = {"enum": list(OPERATORS), "description": "The operator."}
    leaf["properties"]["value"] = {"description": "The constant to compare with; its kind depends on 'op'."}
    rules: list[JSONSchema] = [
        {
            "if": {"properties": {"op": {"const": "exists"}}},
            "then": {"not": {"required": ["value"]}},
            "else": {"required": ["value"]},
        }
    ]
    for operators, value in _VALUE_BY_OPERATOR.items():
        rules.append(
            {
                "if": {"properties": {"op": {"enum": list(operators)}}, "required": ["op"]},
                "then": {"properties": {"value": copy.deepcopy(value)}},
            }
        )
    leaf["allOf"] = rules

    rule = defs["Rule"]["properties"]
    rule["id"].update(minLength=1, pattern=r"\S")
    _string_limit(rule["description"])
    bundle = defs["RuleBundle"]["properties"]
    bundle["rules"]["maxItems"] = DEFAULT_LIMITS.max_rules
    _string_limit(bundle["description"])
    _string_limit(defs["Outcome"]["properties"]["reason"])


def _string_limit(prop: JSONSchema) -> None:
    for option in prop.get("anyOf", [prop]):
        if option.get("type") == "string":
            option["maxLength"] = _MAX_STRING


def main() -> None:
    """Print the schema (``python -m rule_engine.bundle.schema > docs/bundle.schema.json``)."""
    sys.stdout.write(json.dumps(bundle_json_schema(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
