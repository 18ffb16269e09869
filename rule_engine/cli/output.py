"""How commands print: one JSON object, or human lines that are safe for a terminal and fit 80 columns.

Every human line goes through :func:`echo`, which escapes what a terminal would act on (control
characters such as ESC, bidirectional overrides, other format characters, lone surrogates) and
wraps lines longer than :data:`WIDTH` at spaces with a hanging indent. JSON output needs neither:
``json.dumps`` escapes every non-ASCII and control character. Times are rendered by :func:`when`,
which never fails, whatever a store holds.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import unicodedata
from collections.abc import Callable
from typing import Any

import click

from rule_engine.clock import iso
from rule_engine.control.strategies import Strategy

__all__ = ["BAR_WIDTH", "WIDTH", "bar", "clean", "describe", "echo", "emit", "view_dict", "when"]

WIDTH = 80
BAR_WIDTH = 30
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, format (bidi, zero-width), surrogates, separators


def clean(text: object) -> str:
    """``text`` with every character a terminal could act on escaped (``\\x1b``, ``\\u202e``, ...)."""
    value = str(text)
    if value.isascii() and value.isprintable():
        return value
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE else c for c in value)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def echo(line: str = "", *, err: bool = False) -> None:
    """Print one human line, escaped; longer than :data:`WIDTH`, it is wrapped at spaces with a hanging indent.

    A line holding a word that cannot fit anyway (a long path or URL) is printed as it is.
    """
    text = clean(line)
    if len(text) > WIDTH:
        lead = text[: len(text) - len(text.lstrip(" "))]
        hang = lead + "    "
        if all(len(word) <= WIDTH - len(hang) for word in text.split()):
            text = textwrap.fill(
                text, width=WIDTH, subsequent_indent=hang, break_long_words=False, break_on_hyphens=False
            )
    click.echo(text, err=err)


def emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    """Print ``data`` as one JSON document with ``--json``, else call ``human`` (which prints with :func:`echo`)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        human()


def bar(percentage: float, width: int = BAR_WIDTH) -> str:
    """A progress bar: ``[#########---------------------]``."""
    filled = round(width * max(0.0, min(percentage, 100.0)) / 100)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def when(timestamp: float | None) -> str:
    """ISO 8601 of unix seconds; the raw number when it cannot be rendered (a year past 9999, inf); '-' for None."""
    if timestamp is None:
        return "-"
    try:
        return iso(timestamp) or "-"
    except (ValueError, OverflowError, OSError, TypeError):
        return f"{timestamp!r} (unix seconds, not a renderable time)"


def describe(strategy: Strategy) -> str:
    """The strategy's one-line description; never fails on a stored time that cannot be rendered."""
    try:
        return strategy.describe()
    except (ValueError, OverflowError, OSError):
        return f"{strategy.kind} {json.dumps(strategy.to_dict(), default=str)}"


class _Rendered:
    """A nested view whose ``to_dict`` failed, standing in for it with its safe JSON form (see :func:`view_dict`)."""

    def __init__(self, view: Any) -> None:
        self._view = view
        self._data = view_dict(view)

    def to_dict(self) -> dict[str, Any]:
        return self._data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view, name)


def _renderable(value: float) -> bool:
    try:
        iso(value)
    except (ValueError, OverflowError, OSError):
        return False
    return True


def _renders(view: Any) -> bool:
    try:
        view.to_dict()
    except (ValueError, OverflowError, OSError):
        return False
    return True


def view_dict(view: Any) -> dict[str, Any]:
    """``view.to_dict()`` (a report dataclass); a stored time it cannot render is given as the raw number.

    A store written by a host whose clock was far off (or before times were validated) may hold a
    time past the year 9999; reads must still work, so such a field keeps its key and shows the
    unix seconds instead of failing the command.
    """
    try:
        data: dict[str, Any] = view.to_dict()
        return data
    except (ValueError, OverflowError, OSError):
        if not dataclasses.is_dataclass(view) or isinstance(view, type):
            raise
    raw: dict[str, float] = {}
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(view):
        value = getattr(view, item.name)
        if isinstance(value, float) and not _renderable(value):
            raw[item.name] = value
            changes[item.name] = None
        elif dataclasses.is_dataclass(value) and hasattr(value, "to_dict") and not _renders(value):
            changes[item.name] = _Rendered(value)
    substitute: Any = dataclasses.replace(view, **changes)
    data = substitute.to_dict()
    data.update(raw)
    return data
