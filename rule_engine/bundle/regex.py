"""Regular expressions on RE2: linear time in the input, whatever the pattern.

Python's ``re`` backtracks, so a pattern like ``(a+)+$`` can take exponential time on a crafted
event. Bundles come from many authors and events from the internet, so every ``matches`` rule runs
on RE2 (google-re2), which guarantees time linear in the input and refuses constructs that cannot be
matched that way (backreferences, lookaround). Patterns are searched, not anchored.

Linear is not cheap enough on its own: when RE2's DFA gives up on a pattern whose states explode
(``a[ab]{999}c``), it falls back to simulating the program, at a cost per input character that
grows with the program's size (tens of microseconds per character for a 1,000-instruction
program). So the work one ``matches`` leaf can do on one event is bounded by two documented
limits: the pattern's program size (:data:`MAX_PROGRAM_SIZE`, checked at validation) and the
length of the event string (:data:`MAX_MATCH_TEXT`, checked per evaluation).
"""

from __future__ import annotations

from collections.abc import Callable

import re2

__all__ = ["MAX_MATCH_TEXT", "MAX_PROGRAM_SIZE", "check", "compile_search", "program_size"]

#: ``matches`` on an event string longer than this (characters) is an evaluation error.
MAX_MATCH_TEXT = 4096
#: The largest RE2 program (instructions) a ``matches`` pattern may compile to.
MAX_PROGRAM_SIZE = 2000


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


def compile_search(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether ``pattern`` occurs anywhere in a string, in linear time."""
    matcher = re2.Set.SearchSet(_OPTIONS)
    matcher.Add(pattern)
    matcher.Compile()
    match = matcher.Match

    def search(text: str) -> bool:
        return match(text) is not None

    return search
