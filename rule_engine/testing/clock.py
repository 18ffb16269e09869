"""A clock tests move by hand."""

from __future__ import annotations

import math
from datetime import datetime

from rule_engine.clock import as_timestamp

__all__ = ["ManualClock"]

#: 2026-03-01 12:00:00 UTC: a fixed, readable default "now".
DEFAULT_START = 1_772_366_400.0


class ManualClock:
    """A :class:`rule_engine.clock.Clock` that stands still until the test moves it.

    Pass it as ``DeploymentManager(clock=...)`` when a test needs real ``time.perf_counter`` or real
    threads (where freezegun would freeze them too) but full control over the manager's "now".
    Reads are a plain attribute load, so background threads see a moved clock at their next read.
    """

    def __init__(self, now: float | datetime = DEFAULT_START) -> None:
        self._now = _checked(now)

    def now(self) -> float:
        """The current (manual) time in unix seconds."""
        return self._now

    def advance(self, secs: float) -> float:
        """Move time forward by ``secs`` (>= 0) and return the new time."""
        if isinstance(secs, bool) or not isinstance(secs, int | float) or not math.isfinite(secs) or secs < 0:
            raise ValueError(f"advance() moves time forward by a finite number of seconds >= 0, got {secs!r}")
        self._now += float(secs)
        return self._now

    def set(self, t: float | datetime) -> None:
        """Jump to ``t`` (unix seconds or an aware datetime), forwards or backwards."""
        self._now = _checked(t)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def _checked(value: float | datetime) -> float:
    seconds = as_timestamp(value)
    if not math.isfinite(seconds):
        raise ValueError(f"a clock reads a finite time, got {value!r}")
    return seconds
