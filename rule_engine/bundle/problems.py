"""Pydantic's validation errors as bundle problems: JSON paths, plain wording, suggestions."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from rule_engine.bundle.values import OPERATORS, clip, kind_of
from rule_engine.errors import Problem

_CONDITION_KEYS = frozenset({"all", "any", "not", "field", "op", "value"})


def problems_from(
    exc: ValidationError, known_keys: Sequence[str], rule_ids: Sequence[str | None] = ()
) -> list[Problem]:
    """Every pydantic error as a :class:`Problem` at its JSON path, worded for a bundle author.

    ``rule_ids`` are the ids of the document's rules by position (None where a rule has no
    string id): a problem inside ``rules[i]`` names that rule too (see :func:`in_rule`).
    """
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        ctx = error.get("ctx") or {}
        loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("cond:"))]
        if error["type"] == "bundle_semantics":
            problems.append(Problem(ctx["subpath"], error["msg"]))
            problems.extend(ctx.get("more", ()))
            continue
        if "subpath" in ctx:
            loc.append(ctx["subpath"])
        message = _message(error, loc, known_keys)
        problems.append(Problem(render_loc(loc, error["type"]), message + in_rule(loc, rule_ids)))
    return problems or [Problem("$", str(exc))]


def in_rule(loc: Sequence[int | str], rule_ids: Sequence[str | None]) -> str:
    """`` (in rule 'deny-x')`` for a location inside ``rules[i]`` (but not its ``id``), else ``""``.

    A JSON path says where; the rule id says which rule an author is looking for. The id is
    written with ``repr`` (control and bidirectional characters escaped) and clipped.
    """
    if len(loc) < 2 or loc[0] != "rules" or not isinstance(loc[1], int) or not 0 <= loc[1] < len(rule_ids):
        return ""
    if len(loc) >= 3 and loc[2] == "id":
        return ""
    rule_id = rule_ids[loc[1]]
    return f" (in rule {clip(rule_id)})" if isinstance(rule_id, str) and rule_id.strip() else ""


def rule_ids_of(raw: bytes) -> list[str | None]:
    """The ``id`` of each rule of a bundle document by position (None where absent), or []."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    rules = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(rules, list):
        return []
    return [rule.get("id") if isinstance(rule, dict) and isinstance(rule.get("id"), str) else None for rule in rules]


def render_loc(loc: list[int | str], error_type: str) -> str:
    """A location as a JSON path (``rules[3].when.all[0]``, ``$`` for the root)."""
    if error_type == "missing" and loc:
        loc = loc[:-1]
    text = ""
    for part in loc:
        text = f"{text}[{part}]" if isinstance(part, int) else _key_path(text, part)
    return text or "$"


def _key_path(where: str, key: str) -> str:
    """``where.key``, or ``where["key"]`` when the key is not a plain name (``key`` alone at the root)."""
    if _is_identifier(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def _is_identifier(part: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part) is not None


def _message(error: Any, loc: list[int | str], known_keys: Sequence[str]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        if key in _CONDITION_KEYS and len(loc) >= 2 and "when" in loc:
            return (
                f"unexpected key {key!r}: a condition has exactly one of 'all', 'any', 'not', "
                "or a leaf's 'field', 'op' and 'value'"
            )
        return f"unknown key {key!r}{suggest(key, known_keys)}"
    if kind in ("too_short", "string_too_short"):
        minimum = error["ctx"]["min_length"]
        return "must not be empty" if minimum == 1 else f"needs at least {minimum} items"
    if kind == "string_too_long":
        return f"string of {len(value)} characters, over the limit of {error['ctx']['max_length']}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a JSON list, got {kind_of(value)} {clip(value)}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}" if loc else "missing required key"
    if kind == "literal_error" and loc and loc[-1] == "op":
        return f"unknown operator {value!r}{suggest(str(value), OPERATORS)}; operators: {', '.join(OPERATORS)}"
    if kind == "json_invalid":
        detail = str(error["ctx"]["error"]) if "ctx" in error else ""
        if "surrogate" in detail or "end of hex escape" in detail:
            return f"invalid JSON: unpaired surrogate in a \\u escape (strings must be valid Unicode): {detail}"
        return f"invalid JSON: {detail}" if detail else "invalid JSON"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a JSON object, got {kind_of(value)} {clip(value)}"
    if kind == "condition_shape":
        return f"{error['msg']}, got {kind_of(value)} {clip(value)}"
    if kind in ("leaf_value", "field_path", "rule_id", "id_characters"):
        return str(error["msg"])
    if kind == "string_pattern_mismatch":
        return f"invalid {loc[-1] if loc else 'value'} {clip(value)}: only the characters A-Z a-z 0-9 . _ - are allowed"
    message = str(error["msg"])
    message = message[0].lower() + message[1:] if message else message
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message}, got {kind_of(value)} {clip(value)}"
    return message


def suggest(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, [c for c in choices if c != word], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
