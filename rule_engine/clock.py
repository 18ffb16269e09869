"""The one clock of the control plane.

Every operation reads "now" once, from :class:`SystemClock` by default, which calls ``time.time()``
at call time so freezegun (or any injected :class:`Clock`) drives whole rollouts in tests.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "as_timestamp", "iso"]


class Clock(Protocol):
    """Anything with ``now() -> float`` (unix seconds)."""

    def now(self) -> float:
        """The current time in unix seconds."""
        ...


class SystemClock:
    """Reads ``time.time()`` on every call."""

    def now(self) -> float:
        """The current time in unix seconds."""
        return time.time()


def as_timestamp(value: float | int | datetime) -> float:
    """Unix seconds from a number or an aware datetime (a naive datetime is refused)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"datetime {value.isoformat()} has no timezone; use an aware datetime")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected unix seconds or an aware datetime, got {value!r}")
    return float(value)


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 (UTC, seconds) of a unix timestamp, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
