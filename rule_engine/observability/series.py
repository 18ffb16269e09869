"""Short time series of each version's health, for plots over the health window.

:class:`HealthSeries` samples the lifetime totals a manager reports (all processes, from the store)
and keeps, per version, the differences between consecutive samples: evaluations, errors and mean
latency per sampling interval. Only points within ``window_secs`` are kept, and at most
``max_points`` per version, so memory is bounded whatever the sampling rate.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rule_engine.control.status import DeploymentInfo

__all__ = ["HealthSeries"]


@dataclass(frozen=True, slots=True)
class _Totals:
    at: float
    evaluations: int
    errors: int
    latency_sum_us: float


class HealthSeries:
    """Per-version points (evaluations, error rate, mean latency) over the last ``window_secs``."""

    def __init__(self, window_secs: float, max_points: int = 600, max_versions: int = 32) -> None:
        self.window_secs = window_secs
        self.max_points = max_points
        self.max_versions = max_versions
        self._lock = threading.Lock()
        self._last: dict[str, _Totals] = {}
        self._points: dict[str, deque[dict[str, Any]]] = {}

    def sample(self, now: float, infos: Iterable[DeploymentInfo]) -> None:
        """Take one sample of every version's lifetime totals at ``now``."""
        with self._lock:
            seen: set[str] = set()
            for info in infos:
                seen.add(info.version_id)
                m = info.health_metrics
                totals = _Totals(now, m.total_evaluations, m.error_count, m.avg_latency_us * m.total_evaluations)
                previous = self._last.get(info.version_id)
                self._last[info.version_id] = totals
                if previous is None or now <= previous.at:
                    continue
                evaluations = max(0, totals.evaluations - previous.evaluations)
                errors = max(0, totals.errors - previous.errors)
                latency = max(0.0, totals.latency_sum_us - previous.latency_sum_us)
                points = self._points.setdefault(info.version_id, deque(maxlen=self.max_points))
                points.append(
                    {
                        "t": now,
                        "evaluations": evaluations,
                        "error_rate": errors / evaluations if evaluations else 0.0,
                        "avg_latency_us": latency / evaluations if evaluations else 0.0,
                    }
                )
                while points and points[0]["t"] < now - self.window_secs:
                    points.popleft()
            for gone in [v for v in self._last if v not in seen]:
                self._last.pop(gone, None)
                self._points.pop(gone, None)
            while len(self._last) > self.max_versions:
                oldest = next(iter(self._last))
                self._last.pop(oldest, None)
                self._points.pop(oldest, None)

    def points(self) -> dict[str, list[dict[str, Any]]]:
        """Each version's points, oldest first."""
        with self._lock:
            return {version_id: list(points) for version_id, points in self._points.items()}
