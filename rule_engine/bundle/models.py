"""Rule bundles: the JSON format, its validation, and its canonical digest.

A bundle is data, never code. :func:`load_bundle` and :meth:`RuleBundle.model_validate_json` accept
exactly the format documented in ``docs/bundle-format.md`` and reject everything else with a
:class:`~rule_engine.errors.BundleValidationError` that lists every problem with its JSON path.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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

from rule_engine.bundle.checks import semantic_problems as _semantic_problems
from rule_engine.bundle.jsontext import document_without_duplicates as _document_without_duplicates
from rule_engine.bundle.jsontext import duplicate_key_problems
from rule_engine.bundle.jsontext import prechecked_bytes as _prechecked_bytes
from rule_engine.bundle.problems import problems_from, rule_ids_of
from rule_engine.bundle.values import OPERATORS, Operator, unsafe_character, value_problem
from rule_engine.bundle.values import kind_of as kind_of
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


def _safe_id(text: str) -> str:
    """Refuse control and bidirectional-formatting characters in an id (they reach terminals)."""
    problem = unsafe_character(text)
    if problem is not None:
        raise PydanticCustomError("id_characters", problem)
    return text


_Safe = AfterValidator(_safe_id)
_Name = Annotated[StrictStr, Field(min_length=1, max_length=128), _Safe]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, defer_build=False)


class Outcome(_Frozen):
    """What a rule (or the bundle's default) decides: a decision string, a reason, parameters."""

    decision: Annotated[StrictStr, Field(min_length=1, max_length=128), _Safe]
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
        problem = value_problem(self.op, self.value, "value" in self.model_fields_set)
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

    id: Annotated[StrictStr, Field(max_length=128), _Safe]
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

    decision: Annotated[StrictStr, Field(min_length=1), _Safe]
    rule_id: StrictStr | None = None


class BundleTest(_Frozen):
    """An example event and the decision the bundle must give for it."""

    __test__ = False  # not a pytest test class

    name: Annotated[StrictStr, Field(min_length=1, max_length=256), _Safe]
    event: dict[str, Any]
    expect: TestExpectation


class RuleBundle(_Frozen):
    """A versioned set of rules with a default decision and its own tests.

    Build one with :func:`load_bundle` (from a file) or :meth:`model_validate_json` (from text);
    both reject malformed input with a :class:`BundleValidationError`.
    """

    bundle_id: Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=_ID)]
    version: Annotated[StrictStr, Field(min_length=1, max_length=64), _Safe]
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

    When the outermost pause ends, what survived is moved to the oldest generation as a whole
    (``gc.freeze()`` then ``gc.unfreeze()``: two list splices, no traversal), so the first young
    collection after the pause does not walk the new objects either; they are examined by the
    next full collection, as every long-lived object is. Skipped when the application has frozen
    objects itself (``gc.get_freeze_count() > 0``): unfreezing would release them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def parse_bundle(
    data: str | bytes | bytearray, *, limits: BundleLimits = DEFAULT_LIMITS, trusted_digest: str | None = None
) -> RuleBundle:
    """Validate bundle JSON text or bytes into a :class:`RuleBundle`.

    With ``trusted_digest`` (the recorded digest of a version validated when it was prepared), the
    text must be that version's canonical text: when ``sha256(data) == trusted_digest`` the models
    are built without validating again (see :mod:`rule_engine.bundle.trusted`); any other text is
    refused with a :class:`BundleValidationError`.
    """
    if trusted_digest is not None:
        from rule_engine.bundle.trusted import parse_trusted  # it builds these models: imported late

        return parse_trusted(data, trusted_digest)
    with gc_paused():
        return _parse_bundle(data, limits)


def _parse_bundle(data: str | bytes | bytearray, limits: BundleLimits) -> RuleBundle:
    raw = _prechecked_bytes(data, limits)
    try:
        bundle = RuleBundle._validate_raw_json(raw)
    except ValidationError as exc:
        problems = problems_from(exc, _KNOWN_KEYS, rule_ids_of(raw))
        if not any(p.message.startswith("invalid JSON") for p in problems):
            problems.extend(duplicate_key_problems(raw))
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


_KNOWN_KEYS = sorted(
    {name for model in (RuleBundle, Rule, Outcome, Leaf, BundleTest, TestExpectation) for name in model.model_fields}
    | {"all", "any", "not"}
)


AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()
Rule.model_rebuild()
RuleBundle.model_rebuild()
