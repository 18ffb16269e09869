"""A/B experiment reports: per-variant figures and whether the error rates really differ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rule_engine.clock import iso
from rule_engine.control.records import Rollout
from rule_engine.health.verdict import two_proportion_z_test
from rule_engine.serving.counts import HealthCounts

__all__ = ["ExperimentReport", "VariantReport", "build_experiment_report"]


@dataclass(frozen=True, slots=True)
class VariantReport:
    """One variant's figures over the experiment so far."""

    variant: str  # "A" (the stable version) or "B" (the candidate)
    version_id: str
    traffic_share: float
    evaluations: int
    errors: int
    error_rate: float
    timeouts: int
    avg_latency_us: float
    p50_latency_us: float | None
    p99_latency_us: float | None
    decisions: dict[str, int]
    fallbacks: int = 0  # events B failed that A answered instead (on A's report); not in A's evaluations
    fallback_errors: int = 0  # of those, the ones A failed too

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    """Both variants, and a two-proportion z-test on their error rates."""

    a: VariantReport
    b: VariantReport
    started_at: float
    ended_at: float | None
    generated_at: float
    z_score: float
    p_value: float
    significant: bool
    alpha: float

    @property
    def summary(self) -> str:
        """One line for people."""
        verdict = "significant" if self.significant else "not significant"
        fallbacks = f"; {self.a.fallbacks:,} events failed on B were answered by A" if self.a.fallbacks else ""
        return (
            f"A {self.a.error_rate:.2%} vs B {self.b.error_rate:.2%} errors over "
            f"{self.a.evaluations:,} / {self.b.evaluations:,} evaluations: p={self.p_value:.3g} ({verdict} at {self.alpha})"
            f"{fallbacks}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "generated_at": iso(self.generated_at),
            "z_score": self.z_score,
            "p_value": self.p_value,
            "significant": self.significant,
            "alpha": self.alpha,
            "summary": self.summary,
        }


def _variant(name: str, version_id: str, share: float, counts: HealthCounts) -> VariantReport:
    return VariantReport(
        variant=name,
        version_id=version_id,
        traffic_share=share,
        evaluations=counts.evaluations,
        errors=counts.errors,
        error_rate=counts.error_rate,
        timeouts=counts.timeouts,
        avg_latency_us=counts.avg_latency_us,
        p50_latency_us=counts.percentile_us(0.5),
        p99_latency_us=counts.percentile_us(0.99),
        decisions=dict(sorted(counts.decisions.items())),
        fallbacks=counts.fallbacks,
        fallback_errors=counts.fallback_errors,
    )


def build_experiment_report(
    rollout: Rollout, a: HealthCounts, b: HealthCounts, now: float, alpha: float = 0.05
) -> ExperimentReport:
    """The report of an A/B test from each variant's counts since it started.

    Each variant's evaluations and errors are the events routed to it, so the z-test compares like
    with like: events that failed on B and were answered by A are A's ``fallbacks``, not its evaluations.
    """
    z, p = two_proportion_z_test(b.errors, b.evaluations, a.errors, a.evaluations)
    share_b = rollout.share_bp / 10_000
    return ExperimentReport(
        a=_variant("A", rollout.stable, 1 - share_b, a),
        b=_variant("B", rollout.candidate, share_b, b),
        started_at=rollout.started_at,
        ended_at=rollout.ended_at,
        generated_at=now,
        z_score=z,
        p_value=p,
        significant=p < alpha,
        alpha=alpha,
    )
