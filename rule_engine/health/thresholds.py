"""When a version counts as unhealthy (:class:`HealthThresholds`) and its reported figures (:class:`HealthMetrics`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rule_engine.clock import iso
from rule_engine.serving.counts import HealthCounts

if TYPE_CHECKING:
    from rule_engine.health.verdict import Verdict

__all__ = ["HealthMetrics", "HealthThresholds"]


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """When a version counts as unhealthy, and how much data a verdict needs.

    ``max_error_rate``, ``max_latency_us`` (average) and ``max_timeouts`` (count) apply to the recent
    ``window_secs``; ``min_evaluations`` is the least data for any verdict. ``significance`` is the
    p-value below which a candidate's higher error/timeout rate is blamed on it rather than shared
    with the stable version; ``max_latency_ratio`` the same for latency. ``bake_secs``: how long
    after it takes all traffic a new version is still judged (and rolled back if unhealthy).
    """

    max_error_rate: float = 0.01
    max_latency_us: float = 10_000.0
    max_timeouts: int = 100
    min_evaluations: int = 200
    window_secs: float = 300.0
    bucket_secs: float = 5.0
    significance: float = 0.05
    max_latency_ratio: float = 1.5
    bake_secs: float = 300.0

    def __post_init__(self) -> None:
        for name in _FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in _INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
                raise ValueError(f"{name} must be an integer within [0, {MAX_COUNT:,}], got {value!r}")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be within [0, 1], got {self.max_error_rate!r}")
        if self.window_secs <= 0 or self.bucket_secs <= 0 or self.bucket_secs > self.window_secs:
            raise ValueError("need 0 < bucket_secs <= window_secs")
        if self.window_secs > MAX_SECS or not 0 <= self.bake_secs <= MAX_SECS:
            raise ValueError(f"window_secs and bake_secs must be within [0, {MAX_SECS:,.0f}] (a week)")
        if not 0 < self.significance < 1:
            raise ValueError(f"significance must be within (0, 1), got {self.significance!r}")
        if self.max_latency_us < 0 or self.max_latency_ratio <= 0:
            raise ValueError("need max_latency_us >= 0 and max_latency_ratio > 0")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthThresholds:
        """Rebuild from :meth:`to_dict` (validated; a missing field takes its default, an unknown one is refused)."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown analysis setting(s) {sorted(unknown)}; settings are {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**dict(data))


_FLOATS = (
    "max_error_rate",
    "max_latency_us",
    "window_secs",
    "bucket_secs",
    "significance",
    "max_latency_ratio",
    "bake_secs",
)
_INTS = ("max_timeouts", "min_evaluations")
MAX_COUNT = 10**12  # the most evaluations / timeouts a threshold may name
MAX_SECS = 7 * 86_400.0  # the longest window or bake time: a week


@dataclass(frozen=True, slots=True)
class HealthMetrics:
    """A version's health figures, as reported by ``DeploymentInfo.health_metrics``.

    ``total_*`` fields are lifetime totals; ``window`` holds the figures the verdict is based on.
    ``fallbacks`` / ``fallback_errors`` count events a failing candidate left to this version to
    answer: they are apart from ``total_evaluations`` and never enter a verdict.
    """

    total_evaluations: int = 0
    error_count: int = 0
    timeout_count: int = 0
    avg_latency_us: float = 0.0
    error_rate: float = 0.0
    last_check: float | None = None
    p50_latency_us: float | None = None
    p99_latency_us: float | None = None
    window: HealthCounts = field(default_factory=HealthCounts)
    verdict: bool | None = None
    verdict_reason: str = ""
    rule_matches: Mapping[str, int] = field(default_factory=dict)  # lifetime; "" = no rule (default)
    fallbacks: int = 0  # lifetime: events a failing candidate left to this version to answer (not evaluations)
    fallback_errors: int = 0  # lifetime: fallbacks this version failed too

    @classmethod
    def of(
        cls,
        lifetime: HealthCounts,
        window: HealthCounts,
        verdict: Verdict,
        last_check: float | None,
    ) -> HealthMetrics:
        """Figures from lifetime counts, window counts and the window's verdict."""
        return cls(
            total_evaluations=lifetime.evaluations,
            error_count=lifetime.errors,
            timeout_count=lifetime.timeouts,
            avg_latency_us=lifetime.avg_latency_us,
            error_rate=lifetime.error_rate,
            last_check=last_check,
            p50_latency_us=lifetime.percentile_us(0.5),
            p99_latency_us=lifetime.percentile_us(0.99),
            window=window,
            verdict=verdict.healthy,
            verdict_reason=verdict.reason,
            rule_matches=dict(lifetime.rules),
            fallbacks=lifetime.fallbacks,
            fallback_errors=lifetime.fallback_errors,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (for ``status --json``)."""
        return {
            "total_evaluations": self.total_evaluations,
            "error_count": self.error_count,
            "timeout_count": self.timeout_count,
            "avg_latency_us": round(self.avg_latency_us, 3),
            "error_rate": self.error_rate,
            "p50_latency_us": self.p50_latency_us,
            "p99_latency_us": self.p99_latency_us,
            "last_check": iso(self.last_check),
            "window": {
                "evaluations": self.window.evaluations,
                "errors": self.window.errors,
                "timeouts": self.window.timeouts,
                "error_rate": self.window.error_rate,
                "avg_latency_us": round(self.window.avg_latency_us, 3),
                "fallbacks": self.window.fallbacks,
                "fallback_errors": self.window.fallback_errors,
            },
            "fallbacks": self.fallbacks,
            "fallback_errors": self.fallback_errors,
            "healthy": self.verdict,
            "reason": self.verdict_reason,
            "rule_matches": dict(sorted(self.rule_matches.items(), key=lambda item: -item[1])),
        }
