"""Regular expressions on RE2: linear time in the input, whatever the pattern.

Python's ``re`` backtracks, so a pattern like ``(a+)+$`` can take exponential time on a crafted
event. Bundles come from many authors and events from the internet, so every ``matches`` rule runs
on RE2 (google-re2), which guarantees time linear in the input and refuses constructs that cannot be
matched that way (backreferences, lookaround). Patterns are searched, not anchored.
"""

from __future__ import annotations

from collections.abc import Callable

import re2

__all__ = ["check", "compile_search"]


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    return options


_OPTIONS = _options()


def check(pattern: str) -> str | None:
    """Return why ``pattern`` is not a usable RE2 expression, or None when it is."""
    try:
        re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"{detail} (RE2 syntax: no backreferences or lookaround)"
    except (TypeError, ValueError, UnicodeError) as exc:
        return str(exc)
    return None


def compile_search(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether ``pattern`` occurs anywhere in a string, in linear time."""
    matcher = re2.Set.SearchSet(_OPTIONS)
    matcher.Add(pattern)
    matcher.Compile()
    match = matcher.Match

    def search(text: str) -> bool:
        return match(text) is not None

    return search
