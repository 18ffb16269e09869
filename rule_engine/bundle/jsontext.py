"""Bundle bytes before and beside the schema: size and encoding prechecks, and the duplicate-key pass."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rule_engine.bundle.problems import render_loc
from rule_engine.errors import BundleValidationError, Problem

if TYPE_CHECKING:
    from rule_engine.bundle.models import BundleLimits


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


def document_without_duplicates(raw: bytes) -> tuple[Any, list[Problem]]:
    """The parsed document, or None and the problem naming the first key repeated within an object.

    Pydantic's parser keeps the last of repeated keys silently; this pass refuses them, and its
    document gives the canonical form (so the digest needs no dump of the model).
    """
    try:
        return json.loads(raw, object_pairs_hook=_dict_without_duplicates), []
    except _DuplicateKey:
        return None, duplicate_key_problems(raw)
    except (ValueError, RecursionError):  # pydantic's parser accepted it; nothing to add here
        return None, []


def duplicate_key_problems(raw: bytes) -> list[Problem]:
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
    return [Problem(render_loc(loc, "duplicate_key"), f"duplicate key {key!r}: an object may not contain a key twice")]


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


def prechecked_bytes(data: str | bytes | bytearray, limits: BundleLimits) -> bytes:
    """The bundle as UTF-8 bytes, after the checks no JSON parser makes: size, empty, BOM, encoding."""
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
