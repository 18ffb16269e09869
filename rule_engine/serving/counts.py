"""Health counts: what the hot path counts per version, as an additive immutable value.

:class:`HealthCounts` is what a recorder drains and what stores add up per time bucket. It is a pure
value (data plane): the control plane's health package judges it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HISTOGRAM_BUCKETS", "HealthCounts", "sum_counts"]

HISTOGRAM_BUCKETS = 64  # bucket i holds latencies of i bits in nanoseconds: [2**(i-1), 2**i)


@dataclass(frozen=True, slots=True)
class HealthCounts:
    """Additive counters of one version over some period (a bucket, a window, a lifetime)."""

    evaluations: int = 0
    errors: int = 0
    timeouts: int = 0
    latency_sum_us: float = 0.0
    histogram: tuple[int, ...] = ()
    decisions: Mapping[str, int] = field(default_factory=dict)
    rules: Mapping[str, int] = field(default_factory=dict)  # matches per rule id; "" = the default decision
    # Events routed to a *candidate* that failed there and were answered by this (stable) version
    # instead. Counted apart: they are not this version's evaluations (nor errors, latency, decisions),
    # so an arm's figures count only the events routed to it.
    fallbacks: int = 0
    fallback_errors: int = 0  # fallbacks this version failed too (answered with its on_error decision)

    def __add__(self, other: HealthCounts) -> HealthCounts:
        return HealthCounts(
            self.evaluations + other.evaluations,
            self.errors + other.errors,
            self.timeouts + other.timeouts,
            self.latency_sum_us + other.latency_sum_us,
            _add_lists(self.histogram, other.histogram),
            _add_maps(self.decisions, other.decisions),
            _add_maps(self.rules, other.rules),
            self.fallbacks + other.fallbacks,
            self.fallback_errors + other.fallback_errors,
        )

    def __bool__(self) -> bool:
        return self.evaluations > 0 or self.errors > 0 or self.timeouts > 0 or self.fallbacks > 0

    @property
    def error_rate(self) -> float:
        """Errors per evaluation (0 with no evaluations)."""
        return self.errors / self.evaluations if self.evaluations else 0.0

    @property
    def avg_latency_us(self) -> float:
        """Mean latency in microseconds (0 with no evaluations)."""
        return self.latency_sum_us / self.evaluations if self.evaluations else 0.0

    def percentile_us(self, q: float) -> float | None:
        """The q-quantile (0..1) of latency in microseconds, from the histogram (None if empty).

        Buckets are powers of two; the value is interpolated inside the bucket, so it is exact to
        within the bucket's width.
        """
        total = sum(self.histogram)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for bits, count in enumerate(self.histogram):
            if count and seen + count >= rank:
                low = 0 if bits == 0 else 1 << (bits - 1)
                high = 1 if bits == 0 else 1 << bits
                fraction = (rank - seen) / count
                return (low + (high - low) * fraction) / 1000
            seen += count
        return (1 << (len(self.histogram) - 1)) / 1000

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (stored in buckets)."""
        return {
            "evaluations": self.evaluations,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "latency_sum_us": self.latency_sum_us,
            "histogram": list(self.histogram),
            "decisions": dict(self.decisions),
            "rules": dict(self.rules),
            "fallbacks": self.fallbacks,
            "fallback_errors": self.fallback_errors,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCounts:
        """Rebuild from :meth:`to_dict` (counts stored before fallbacks were counted apart have none)."""
        return cls(
            int(data.get("evaluations", 0)),
            int(data.get("errors", 0)),
            int(data.get("timeouts", 0)),
            float(data.get("latency_sum_us", 0.0)),
            tuple(int(x) for x in data.get("histogram", ())),
            {str(k): int(v) for k, v in dict(data.get("decisions", {})).items()},
            {str(k): int(v) for k, v in dict(data.get("rules", {})).items()},
            int(data.get("fallbacks", 0)),
            int(data.get("fallback_errors", 0)),
        )


def _add_lists(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b:
        return a
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return tuple(x + (shorter[i] if i < len(shorter) else 0) for i, x in enumerate(longer))


def _add_maps(a: Mapping[str, int], b: Mapping[str, int]) -> Mapping[str, int]:
    if not a:
        return b
    if not b:
        return a
    merged = dict(a)
    for key, value in b.items():
        merged[key] = merged.get(key, 0) + value
    return merged


def sum_counts(parts: Iterable[HealthCounts]) -> HealthCounts:
    """The sum of several counts."""
    total = HealthCounts()
    for part in parts:
        total = total + part
    return total
