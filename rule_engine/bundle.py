"""Rule bundles: the JSON format, its validation, and its canonical digest.

A bundle is data, never code. :func:`load_bundle` and :meth:`RuleBundle.model_validate_json` accept
exactly the format documented in ``docs/bundle-format.md`` and reject everything else with a
:class:`~rule_engine.errors.BundleValidationError` that lists every problem with its JSON path.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rule_engine import _regex
from rule_engine.errors import BundleValidationError, Problem

__all__ = [
    "DEFAULT_LIMITS",
    "OPERATORS",
    "AllCondition",
    "AnyCondition",
    "BundleLimits",
    "BundleTest",
    "Condition",
    "Leaf",
    "NotCondition",
    "Outcome",
    "Rule",
    "RuleBundle",
    "TestExpectation",
    "canonical_json",
    "load_bundle",
    "parse_bundle",
]

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


@dataclass(frozen=True, slots=True)
class BundleLimits:
    """Hard limits enforced on every bundle (documented in docs/bundle-format.md)."""

    max_bytes: int = 64 * 1024 * 1024
    max_rules: int = 100_000
    max_depth: int = 32
    max_string: int = 4096
    max_regex: int = 1024
    max_list: int = 10_000


DEFAULT_LIMITS = BundleLimits()

_ID = r"^[A-Za-z0-9._-]+$"
_Name = Annotated[StrictStr, Field(min_length=1, max_length=128)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, defer_build=False)


class Outcome(_Frozen):
    """What a rule (or the bundle's default) decides: a decision string, a reason, parameters."""

    decision: Annotated[StrictStr, Field(min_length=1, max_length=128)]
    reason: StrictStr | None = None
    params: dict[str, Any] | None = None


class Leaf(_Frozen):
    """A comparison of one event field with a constant: ``{"field": "a.b", "op": "gte", "value": 1}``."""

    field: StrictStr
    op: Operator
    value: Any = None

    @field_validator("field")
    @classmethod
    def _field_path(cls, path: str) -> str:
        if not path or any(not part for part in path.split(".")):
            message = f"field must be a dotted path with non-empty parts, got {path!r}"
            raise PydanticCustomError("field_path", message)
        return path

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Leaf:
        problem = _value_problem(self.op, self.value, "value" in self.model_fields_set)
        if problem is not None:
            raise PydanticCustomError("leaf_value", problem, {"subpath": "value"})
        return self

    @property
    def path(self) -> tuple[str, ...]:
        """The field's path split into its parts."""
        return tuple(self.field.split("."))

    @property
    def has_value(self) -> bool:
        """Whether the leaf carries a ``value`` (every operator but ``exists`` does)."""
        return "value" in self.model_fields_set


class AllCondition(_Frozen):
    """True when every condition in the list is true (evaluated in order, stopping at the first false)."""

    conditions: tuple[Condition, ...] = Field(alias="all", min_length=1)


class AnyCondition(_Frozen):
    """True when at least one condition in the list is true (stopping at the first true)."""

    conditions: tuple[Condition, ...] = Field(alias="any", min_length=1)


class NotCondition(_Frozen):
    """True when the condition is false."""

    condition: Condition = Field(alias="not")


def _condition_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "all" in value:
            return "cond:all"
        if "any" in value:
            return "cond:any"
        if "not" in value:
            return "cond:not"
        return "cond:leaf"
    return _MODEL_TAGS.get(type(value))


Condition = Annotated[
    Annotated[AllCondition, Tag("cond:all")]
    | Annotated[AnyCondition, Tag("cond:any")]
    | Annotated[NotCondition, Tag("cond:not")]
    | Annotated[Leaf, Tag("cond:leaf")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition_shape",
        custom_error_message="expected a condition object with one of 'all', 'any', 'not' or 'field'",
    ),
]
_MODEL_TAGS: dict[type, str] = {
    AllCondition: "cond:all",
    AnyCondition: "cond:any",
    NotCondition: "cond:not",
    Leaf: "cond:leaf",
}


class Rule(_Frozen):
    """One rule: which agents and flows it applies to, when it matches, and what it decides."""

    id: Annotated[StrictStr, Field(max_length=128)]
    priority: StrictInt = 0
    description: StrictStr | None = None
    agents: tuple[_Name, ...] | None = Field(default=None, min_length=1)
    flows: tuple[_Name, ...] | None = Field(default=None, min_length=1)
    when: Condition | None = None
    then: Outcome

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, rule_id: str) -> str:
        if not rule_id.strip():
            raise PydanticCustomError("rule_id", "rule id must not be empty")
        return rule_id


class TestExpectation(_Frozen):
    """What a bundle test expects: a decision and, optionally, the rule that makes it."""

    decision: Annotated[StrictStr, Field(min_length=1)]
    rule_id: StrictStr | None = None


class BundleTest(_Frozen):
    """An example event and the decision the bundle must give for it."""

    __test__ = False  # not a pytest test class

    name: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    event: dict[str, Any]
    expect: TestExpectation


class RuleBundle(_Frozen):
    """A versioned set of rules with a default decision and its own tests.

    Build one with :func:`load_bundle` (from a file) or :meth:`model_validate_json` (from text);
    both reject malformed input with a :class:`BundleValidationError`.
    """

    bundle_id: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=_ID)]
    version: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: StrictStr | None = None
    default: Outcome | None = None
    on_error: Outcome | None = None
    rules: tuple[Rule, ...]
    tests: tuple[BundleTest, ...] = ()

    @model_validator(mode="after")
    def _bundle_level_checks(self) -> RuleBundle:
        problems = list(_semantic_problems(self, DEFAULT_LIMITS))
        if problems:
            first = problems[0]
            raise PydanticCustomError("bundle_semantics", first.message, {"subpath": first.path, "more": problems[1:]})
        return self

    @classmethod
    def model_validate_json(
        cls,
        json_data: str | bytes | bytearray,
        *,
        strict: bool | None = None,
        extra: Literal["allow", "ignore", "forbid"] | None = None,
        context: Any | None = None,
        by_alias: bool | None = None,
        by_name: bool | None = None,
        **_: Any,
    ) -> RuleBundle:
        """Parse and validate bundle JSON; raise :class:`BundleValidationError` on any problem."""
        return parse_bundle(json_data)

    @classmethod
    def _validate_raw_json(cls, raw: bytes) -> RuleBundle:
        return super().model_validate_json(raw)

    @cached_property
    def canonical(self) -> str:
        """The canonical JSON text: the document as written, keys sorted, no insignificant whitespace."""
        return json.dumps(
            self.model_dump(mode="json", by_alias=True, exclude_unset=True),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )

    @cached_property
    def digest(self) -> str:
        """sha256 (hex) of the bundle's canonical JSON: its identity for caching and integrity."""
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @property
    def default_outcome(self) -> Outcome:
        """The decision when no rule matches (``skip`` when the bundle gives none)."""
        return self.default if self.default is not None else Outcome(decision="skip")

    @property
    def error_outcome(self) -> Outcome:
        """The decision when evaluation fails (``error`` when the bundle gives none)."""
        return self.on_error if self.on_error is not None else Outcome(decision="error")


def canonical_json(bundle: RuleBundle) -> str:
    """The canonical form: what the author wrote, keys sorted, no insignificant whitespace, UTF-8."""
    return bundle.canonical


def load_bundle(path: str | os.PathLike[str], *, limits: BundleLimits = DEFAULT_LIMITS) -> RuleBundle:
    """Read and validate a bundle file. Raise :class:`BundleValidationError` naming the file."""
    source = os.fspath(path)
    try:
        size = Path(source).stat().st_size
        if size > limits.max_bytes:
            raise BundleValidationError(
                [Problem("$", f"file is {size:,} bytes, over the limit of {limits.max_bytes:,}")],
                source=source,
            )
        data = Path(source).read_bytes()
    except OSError as exc:
        raise BundleValidationError([Problem("$", f"cannot read file: {exc.strerror or exc}")], source=source) from exc
    try:
        return parse_bundle(data, limits=limits)
    except BundleValidationError as exc:
        raise exc.with_source(source) from None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects at once (restored after).

    Parsing and compiling a big bundle allocates hundreds of thousands of objects, none of them
    garbage yet; each generation-0 overflow would make the collector traverse them all again,
    which can double the time. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_bundle(data: str | bytes | bytearray, *, limits: BundleLimits = DEFAULT_LIMITS) -> RuleBundle:
    """Validate bundle JSON text or bytes into a :class:`RuleBundle`."""
    with gc_paused():
        return _parse_bundle(data, limits)


def _parse_bundle(data: str | bytes | bytearray, limits: BundleLimits) -> RuleBundle:
    raw = _prechecked_bytes(data, limits)
    try:
        bundle = RuleBundle._validate_raw_json(raw)
    except ValidationError as exc:
        problems = _problems_from(exc)
        if not any(p.message.startswith("invalid JSON") for p in problems):
            problems.extend(_duplicate_key_problems(raw))
        raise BundleValidationError(problems) from None
    except RecursionError:
        raise BundleValidationError([Problem("$", f"nesting depth exceeds the limit of {limits.max_depth}")]) from None
    document, problems = _document_without_duplicates(raw)
    if limits != DEFAULT_LIMITS:
        problems.extend(_semantic_problems(bundle, limits))
    if problems:
        raise BundleValidationError(problems)
    if document is not None:
        # The parsed document is what the author wrote: its canonical dump equals the model's
        # (exclude_unset) and costs a fraction of dumping the model; cached like the property would.
        bundle.__dict__["canonical"] = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    return bundle


class _DuplicateKey(Exception):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len(pairs) > 1 and len(pairs) != len(dict(pairs)):
        raise _DuplicateKey


def _dict_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built = dict(pairs)
    if len(built) != len(pairs):
        raise _DuplicateKey
    return built


def _document_without_duplicates(raw: bytes) -> tuple[Any, list[Problem]]:
    """The parsed document, or None and the problem naming the first key repeated within an object.

    Pydantic's parser keeps the last of repeated keys silently; this pass refuses them, and its
    document gives the canonical form (so the digest needs no dump of the model).
    """
    try:
        return json.loads(raw, object_pairs_hook=_dict_without_duplicates), []
    except _DuplicateKey:
        return None, _duplicate_key_problems(raw)
    except (ValueError, RecursionError):  # pydantic's parser accepted it; nothing to add here
        return None, []


def _duplicate_key_problems(raw: bytes) -> list[Problem]:
    """Report the first key repeated within one object (the JSON parser would keep the last silently).

    A pass whose hook builds nothing; only when it finds a repeat is the document parsed again to
    name the place.
    """
    try:
        json.loads(raw, object_pairs_hook=_reject_duplicates)
    except _DuplicateKey:
        pass
    except (ValueError, RecursionError):  # pydantic's parser accepted it; nothing to add here
        return []
    else:
        return []
    found = _first_duplicate(json.loads(raw, object_pairs_hook=list), [])
    if found is None:  # pragma: no cover - the first pass found one
        return []
    loc, key = found
    return [Problem(_render_loc(loc, "duplicate_key"), f"duplicate key {key!r}: an object may not contain a key twice")]


def _first_duplicate(value: Any, loc: list[int | str]) -> tuple[list[int | str], str] | None:
    """Where the first repeated key is, in document order (objects parsed as lists of pairs)."""
    if not isinstance(value, list):
        return None
    is_object = bool(value) and type(value[0]) is tuple  # arrays parse to lists, never tuples
    seen: set[str] = set()
    for index, item in enumerate(value):
        if is_object:
            key, item = item
            if key in seen:
                return [*loc, key], key
            seen.add(key)
            found = _first_duplicate(item, [*loc, key])
        else:
            found = _first_duplicate(item, [*loc, index])
        if found is not None:
            return found
    return None


def _prechecked_bytes(data: str | bytes | bytearray, limits: BundleLimits) -> bytes:
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BundleValidationError([Problem("$", f"text is not valid Unicode at character {exc.start}")]) from None
    else:
        raw = bytes(data)
    if len(raw) > limits.max_bytes:
        raise BundleValidationError(
            [Problem("$", f"bundle is {len(raw):,} bytes, over the limit of {limits.max_bytes:,}")]
        )
    if not raw.strip():
        raise BundleValidationError([Problem("$", "file is empty: expected a JSON object")])
    if raw.startswith(b"\xef\xbb\xbf"):
        raise BundleValidationError(
            [Problem("$", "file starts with a UTF-8 byte order mark; save it as UTF-8 without BOM")]
        )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise BundleValidationError(
            [
                Problem(
                    "$",
                    f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})",
                )
            ]
        ) from None
    return raw


# --- semantic checks: what the schema alone cannot say -------------------------------------------


def _semantic_problems(bundle: RuleBundle, limits: BundleLimits) -> Iterator[Problem]:
    """What the schema alone cannot say: duplicates, references, limits, finite numbers."""
    check = _Checker(limits)
    return iter(check.bundle(bundle))


_Path = tuple[int | str, ...]
_PLAIN = (int, bool, type(None))


class _Checker:
    """Walks a validated bundle once, collecting problems; paths are rendered only for problems."""

    def __init__(self, limits: BundleLimits) -> None:
        self.limits = limits
        self.problems: list[Problem] = []

    def add(self, path: _Path, message: str) -> None:
        self.problems.append(Problem(_render_loc(list(path), ""), message))

    def bundle(self, bundle: RuleBundle) -> list[Problem]:
        limits = self.limits
        if len(bundle.rules) > limits.max_rules:
            self.add(("rules",), f"{len(bundle.rules)} rules, over the limit of {limits.max_rules}")
        self.string(bundle.description, ("description",))
        seen: dict[str, int] = {}
        for index, rule in enumerate(bundle.rules):
            if rule.id in seen:
                self.add(("rules", index, "id"), f"duplicate rule id {rule.id!r} (first at rules[{seen[rule.id]}])")
            else:
                seen[rule.id] = index
            if rule.description is not None:
                self.string(rule.description, ("rules", index, "description"))
            if rule.when is not None:
                self.condition(rule.when, ("rules", index, "when"), 1)
            self.outcome(rule.then, ("rules", index, "then"))
        for name, outcome in (("default", bundle.default), ("on_error", bundle.on_error)):
            if outcome is not None:
                self.outcome(outcome, (name,))
        names: dict[str, int] = {}
        for index, test in enumerate(bundle.tests):
            if test.name in names:
                self.add(
                    ("tests", index, "name"),
                    f"duplicate test name {test.name!r} (first at tests[{names[test.name]}])",
                )
            else:
                names[test.name] = index
            rule_id = test.expect.rule_id
            if rule_id is not None and rule_id not in seen:
                self.add(("tests", index, "expect", "rule_id"), f"unknown rule {rule_id!r}{_suggest(rule_id, seen)}")
            self.value(test.event, ("tests", index, "event"), 1)
        return self.problems

    def condition(self, cond: Any, path: _Path, depth: int) -> None:
        limits = self.limits
        if depth > limits.max_depth:
            self.add(path, f"condition nesting depth exceeds the limit of {limits.max_depth}")
            return
        kind = type(cond)
        if kind is Leaf:
            if len(cond.field) > limits.max_string:
                self.add((*path, "field"), f"field path longer than the limit of {limits.max_string} characters")
            value = cond.value
            if type(value) in _PLAIN:
                return
            if cond.op == "matches" and isinstance(value, str) and len(value) > limits.max_regex:
                self.add(
                    (*path, "value"),
                    f"regular expression of {len(value)} characters, over the limit of {limits.max_regex}",
                )
            elif isinstance(value, list) and len(value) > limits.max_list:
                self.add((*path, "value"), f"list of {len(value)} items, over the limit of {limits.max_list}")
            else:
                self.value(value, (*path, "value"), depth)
        elif kind is AllCondition or kind is AnyCondition:
            key = "all" if kind is AllCondition else "any"
            if len(cond.conditions) > limits.max_list:
                self.add(
                    (*path, key), f"list of {len(cond.conditions)} conditions, over the limit of {limits.max_list}"
                )
            for i, child in enumerate(cond.conditions):
                self.condition(child, (*path, key, i), depth + 1)
        elif kind is NotCondition:
            self.condition(cond.condition, (*path, "not"), depth + 1)

    def outcome(self, outcome: Outcome, path: _Path) -> None:
        if outcome.reason is not None:
            self.string(outcome.reason, (*path, "reason"))
        if outcome.params is not None:
            self.value(outcome.params, (*path, "params"), 1)

    def string(self, text: str | None, path: _Path) -> None:
        if text is not None and len(text) > self.limits.max_string:
            self.add(path, f"string of {len(text)} characters, over the limit of {self.limits.max_string}")

    def value(self, value: Any, path: _Path, depth: int) -> None:
        limits = self.limits
        kind = type(value)
        if kind in _PLAIN:
            return
        if depth > limits.max_depth:
            self.add(path, f"nesting depth exceeds the limit of {limits.max_depth}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                self.add(path, f"number {value!r} is not finite (NaN and Infinity are not JSON)")
        elif isinstance(value, str):
            if len(value) > limits.max_string:
                self.add(path, f"string of {len(value)} characters, over the limit of {limits.max_string}")
        elif isinstance(value, dict):
            for key, item in value.items():
                if len(key) > limits.max_string:
                    self.add(path, f"key of {len(key)} characters, over the limit of {limits.max_string}")
                self.value(item, (*path, key), depth + 1)
        elif isinstance(value, list):
            if len(value) > limits.max_list:
                self.add(path, f"list of {len(value)} items, over the limit of {limits.max_list}")
                return
            for i, item in enumerate(value):
                self.value(item, (*path, i), depth + 1)


# --- operator value shapes ------------------------------------------------------------------------

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


def _value_problem(op: str, value: Any, has_value: bool) -> str | None:
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
        return None if error is None else f"invalid regular expression {_clip(value)}: {error}"
    return f"unknown operator {op!r}"  # pragma: no cover - the Literal rejects it first


def _shape(op: str, expected: str, value: Any) -> str:
    return f"operator {op!r} needs {expected}, got {kind_of(value)} {_clip(value)}"


def _clip(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# --- pydantic errors into problems with JSON paths ------------------------------------------------

_KNOWN_KEYS = sorted(
    {name for model in (RuleBundle, Rule, Outcome, Leaf, BundleTest, TestExpectation) for name in model.model_fields}
    | {"all", "any", "not"}
)


_CONDITION_KEYS = frozenset({"all", "any", "not", "field", "op", "value"})


def _problems_from(exc: ValidationError) -> list[Problem]:
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
        problems.append(Problem(_render_loc(loc, error["type"]), _message(error, loc)))
    return problems or [Problem("$", str(exc))]


def _render_loc(loc: list[int | str], error_type: str) -> str:
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


def _message(error: Any, loc: list[int | str]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        if key in _CONDITION_KEYS and len(loc) >= 2 and "when" in loc:
            return (
                f"unexpected key {key!r}: a condition has exactly one of 'all', 'any', 'not', "
                "or a leaf's 'field', 'op' and 'value'"
            )
        return f"unknown key {key!r}{_suggest(key, _KNOWN_KEYS)}"
    if kind in ("too_short", "string_too_short"):
        minimum = error["ctx"]["min_length"]
        return "must not be empty" if minimum == 1 else f"needs at least {minimum} items"
    if kind == "string_too_long":
        return f"string of {len(value)} characters, over the limit of {error['ctx']['max_length']}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a JSON list, got {kind_of(value)} {_clip(value)}"
    if kind == "missing":
        return f"missing required key {loc[-1]!r}" if loc else "missing required key"
    if kind == "literal_error" and loc and loc[-1] == "op":
        return f"unknown operator {value!r}{_suggest(str(value), OPERATORS)}; operators: {', '.join(OPERATORS)}"
    if kind == "json_invalid":
        detail = str(error["ctx"]["error"]) if "ctx" in error else ""
        if "surrogate" in detail or "end of hex escape" in detail:
            return f"invalid JSON: unpaired surrogate in a \\u escape (strings must be valid Unicode): {detail}"
        return f"invalid JSON: {detail}" if detail else "invalid JSON"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a JSON object, got {kind_of(value)} {_clip(value)}"
    if kind == "condition_shape":
        return f"{error['msg']}, got {kind_of(value)} {_clip(value)}"
    if kind in ("leaf_value", "field_path", "rule_id"):
        return str(error["msg"])
    if kind == "string_pattern_mismatch":
        return (
            f"invalid {loc[-1] if loc else 'value'} {_clip(value)}: only the characters A-Z a-z 0-9 . _ - are allowed"
        )
    message = str(error["msg"])
    message = message[0].lower() + message[1:] if message else message
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{message}, got {kind_of(value)} {_clip(value)}"
    return message


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, [c for c in choices if c != word], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()
Rule.model_rebuild()
RuleBundle.model_rebuild()
