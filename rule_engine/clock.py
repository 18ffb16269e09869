"""The one clock of the control plane.

Every operation reads "now" once, from :class:`SystemClock` by default, which calls ``time.time()``
at call time so freezegun (or any injected :class:`Clock`) drives whole rollouts in tests.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["LAST_RENDERABLE_TIME", "Clock", "SystemClock", "as_timestamp", "iso"]

LAST_RENDERABLE_TIME = 253_402_300_800.0  # 10000-01-01T00:00:00Z: times from here on have no ISO 8601 form


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
    """ISO 8601 (UTC, seconds) of a unix timestamp, or None; never raises.

    A time outside what ISO 8601 renders (before 1970 is fine; after 9999, inf, NaN) is rendered as
    its unix seconds, so a bad value read back from a store cannot break a read.
    """
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError, TypeError):
        return f"{timestamp!r} (unix seconds)"
