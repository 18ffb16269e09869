"""Regular expressions on RE2: linear time in the input, whatever the pattern.

Python's ``re`` backtracks, so a pattern like ``(a+)+$`` can take exponential time on a crafted
event. Bundles come from many authors and events from the internet, so every ``matches`` rule runs
on RE2 (google-re2), which guarantees time linear in the input and refuses constructs that cannot be
matched that way (backreferences, lookaround). Patterns are searched, not anchored.

Linear is not cheap enough on its own: when RE2's DFA gives up on a pattern whose states explode
(``a[ab]{999}c``), it falls back to simulating the program, at a cost per input character that
grows with the program's size (tens of microseconds per character for a 1,000-instruction
program). So the work one ``matches`` leaf can do on one event is bounded: the pattern's
program size is at most :data:`MAX_PROGRAM_SIZE` (checked at validation), and the event string
may be at most :func:`text_limit` characters, ``MATCH_WORK / program size`` (clamped to
``MIN_MATCH_TEXT .. MAX_MATCH_TEXT``); a longer one is an evaluation error.
"""

from __future__ import annotations

from collections.abc import Callable

import re2

__all__ = [
    "MATCH_WORK",
    "MAX_MATCH_TEXT",
    "MAX_PROGRAM_SIZE",
    "MIN_MATCH_TEXT",
    "check",
    "compile_search",
    "program_size",
    "text_limit",
]

#: The largest RE2 program (instructions) a ``matches`` pattern may compile to (validation).
MAX_PROGRAM_SIZE = 2000
#: The work one ``matches`` leaf may do on one event: program size x string length.
MATCH_WORK = 1 << 24
#: Every pattern accepts event strings of at least this many characters...
MIN_MATCH_TEXT = 4096
#: ...and none longer than this many.
MAX_MATCH_TEXT = 1 << 20


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    return options


_OPTIONS = _options()


def check(pattern: str) -> str | None:
    """Return why ``pattern`` is not a usable RE2 expression, or None when it is."""
    try:
        size = re2.compile(pattern, options=_OPTIONS).programsize
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"{detail} (RE2 syntax: no backreferences or lookaround)"
    except (TypeError, ValueError, UnicodeError) as exc:
        return str(exc)
    if size > MAX_PROGRAM_SIZE:
        return (
            f"compiles to an RE2 program of {size} instructions, over the limit of {MAX_PROGRAM_SIZE} "
            "(large counted repetitions such as [ab]{999} cost that much per event character)"
        )
    return None


def program_size(pattern: str) -> int:
    """The size of the RE2 program ``pattern`` compiles to (instructions); the pattern must be valid."""
    return int(re2.compile(pattern, options=_OPTIONS).programsize)


def text_limit(pattern: str) -> int:
    """The longest event string (characters) ``matches`` with this valid pattern evaluates."""
    return min(MAX_MATCH_TEXT, max(MIN_MATCH_TEXT, MATCH_WORK // program_size(pattern)))


def compile_search(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether ``pattern`` occurs anywhere in a string, in linear time."""
    matcher = re2.Set.SearchSet(_OPTIONS)
    matcher.Add(pattern)
    matcher.Compile()
    match = matcher.Match

    def search(text: str) -> bool:
        return match(text) is not None

    return search
