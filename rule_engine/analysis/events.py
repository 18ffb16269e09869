"""Read recorded events: JSON Lines, gzip-compressed or not, from a file or ``-`` (stdin).

Each line is either an event object or a *record* whose ``event`` member is an object: ``{"event":
{...}, "key": ...}`` (the form a decision log will write; other members are ignored). The routing
key is the record's ``key`` when present, else the event's ``key_field`` (``user_id``, like
:class:`~rule_engine.RuleEngine`; a dotted path reads a nested field).

Every cost is bounded: a line longer than ``max_line_bytes`` is skipped (read in chunks, never held
whole), at most ``max_events`` events are read (the rest is reported as truncated), and at most
``max_problems`` bad lines are described (all are counted). Gzip is recognised by its magic bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from rule_engine.errors import RuleEngineError

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_MAX_LINE_BYTES",
    "EventSource",
    "EventsError",
    "Recorded",
    "read_events",
]

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
DEFAULT_MAX_EVENTS = 1_000_000
_MAX_PROBLEMS = 5
_CHUNK = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_DECODER = json.JSONDecoder()


class EventsError(RuleEngineError):
    """An events file cannot be read at all (missing, unreadable, broken gzip)."""


class Recorded(NamedTuple):
    """One recorded event: its line number, the event object and its routing key (None: no key)."""

    line: int
    event: Mapping[str, Any]
    key: Any


@dataclass
class EventSource:
    """Where events come from and what reading them found: counts of bad lines, truncation."""

    path: str
    key_field: str = "user_id"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_events: int = DEFAULT_MAX_EVENTS
    events: int = 0
    invalid: int = 0
    truncated: bool = False
    problems: list[str] = field(default_factory=list)
    compressed: bool = False

    def __iter__(self) -> Iterator[Recorded]:
        """Read the events once, updating the counts as it goes."""
        with _open(self.path) as (stream, compressed):
            self.compressed = compressed
            try:
                yield from self._records(stream)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise EventsError(f"{self.path}: cannot read events: {exc}") from exc

    def summary(self) -> dict[str, Any]:
        """The JSON form of what was read."""
        return {
            "path": self.path,
            "events": self.events,
            "invalid_lines": self.invalid,
            "truncated": self.truncated,
            "problems": list(self.problems),
        }

    def _bad(self, line: int, why: str) -> None:
        self.invalid += 1
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(f"line {line}: {why}")

    def _records(self, stream: IO[bytes]) -> Iterator[Recorded]:
        limit, most, key_field = self.max_line_bytes, self.max_events, self.key_field
        decode = _DECODER.decode
        readline = stream.readline
        number = 0
        while True:
            raw = readline(limit + 1)
            if not raw:
                return
            number += 1
            if len(raw) > limit:
                if not raw.endswith(b"\n"):
                    _skip_rest_of_line(stream)
                self._bad(number, f"longer than {limit:,} bytes")
                continue
            try:
                value = decode(raw.decode("utf-8"))
            except UnicodeDecodeError:
                self._bad(number, "not UTF-8")
                continue
            except (ValueError, RecursionError) as exc:
                if not raw.strip():
                    continue  # a blank line
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
                self._bad(number, f"not valid JSON ({reason})")
                continue
            if type(value) is not dict:
                self._bad(number, f"expected a JSON object, got {type(value).__name__}")
                continue
            if self.events >= most:
                self.truncated = True
                return
            self.events += 1
            inner = value.get("event")
            if type(inner) is dict:
                key = value.get("key")
                yield Recorded(number, inner, key if key is not None else _key_of(inner, key_field))
            else:
                yield Recorded(number, value, _key_of(value, key_field))


def read_events(
    path: str,
    *,
    key_field: str = "user_id",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_events: int = DEFAULT_MAX_EVENTS,
) -> EventSource:
    """An :class:`EventSource` on ``path`` (``-`` for stdin); iterate it to read the events."""
    if max_line_bytes < 1 or max_events < 1:
        raise ValueError("max_line_bytes and max_events must be positive")
    return EventSource(path, key_field, max_line_bytes, max_events)


def _key_of(event: Mapping[str, Any], key_field: str) -> Any:
    value: Any = event.get(key_field)
    if value is not None or "." not in key_field:
        return value
    value = event
    for part in key_field.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _skip_rest_of_line(stream: IO[bytes]) -> None:
    while True:
        chunk = stream.readline(_CHUNK)
        if not chunk or chunk.endswith(b"\n"):
            return


class _Prepended(io.RawIOBase):
    """The bytes already read from a stream (to look for the gzip magic), then the rest of it.

    Closing it never closes the underlying stream, so stdin survives being wrapped.
    """

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


@contextmanager
def _open(path: str) -> Iterator[tuple[IO[bytes], bool]]:
    try:
        raw: IO[bytes] = sys.stdin.buffer if path == "-" else Path(path).open("rb")  # noqa: SIM115
    except OSError as exc:
        raise EventsError(f"{path}: cannot read events: {exc.strerror or exc}") from exc
    try:
        try:
            head = raw.read(2)
        except OSError as exc:
            raise EventsError(f"{path}: cannot read events: {exc.strerror or exc}") from exc
        buffered: IO[bytes] = io.BufferedReader(_Prepended(head, raw), buffer_size=_CHUNK)
        if head == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=buffered, mode="rb") as unzipped:
                yield cast(IO[bytes], unzipped), True
        else:
            yield buffered, False
    finally:
        if path != "-":
            raw.close()
