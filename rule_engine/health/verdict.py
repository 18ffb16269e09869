"""Judging a version on its health counts.

:func:`judge` gives a verdict on a version's counts over the recent window
(``HealthThresholds.window_secs``), never on its lifetime, so hours of good traffic cannot hide a new
failure. Below ``min_evaluations`` there is no verdict (``None``): a stage holds and nothing is rolled
back for lack of data. When a baseline (the stable version over the same window) is given, a
candidate is only blamed for a failure it does not share: its error or timeout rate must also be
significantly higher (one-sided two-proportion z-test) and its latency clearly higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rule_engine.health.thresholds import HealthThresholds
from rule_engine.serving.counts import HealthCounts

__all__ = ["Verdict", "judge", "two_proportion_z_test"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of judging a version: healthy True/False, or None (no verdict yet), and why."""

    healthy: bool | None
    reason: str


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """z and the two-sided p-value for H0: the rates x1/n1 and x2/n2 are equal (pooled)."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 0.0, 1.0
    z = (p1 - p2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def _significantly_worse(x1: int, n1: int, x2: int, n2: int, alpha: float) -> bool:
    """Whether rate 1 is higher than rate 2 at one-sided level ``alpha``."""
    z, p_two_sided = two_proportion_z_test(x1, n1, x2, n2)
    return z > 0 and p_two_sided / 2 < alpha


def judge(counts: HealthCounts, thresholds: HealthThresholds, baseline: HealthCounts | None = None) -> Verdict:
    """Judge a version's window ``counts`` against ``thresholds`` (and a ``baseline``, if any)."""
    n = counts.evaluations
    window = f"{thresholds.window_secs:g}s"
    if n < thresholds.min_evaluations or (n == 0 and thresholds.min_evaluations > 0):
        return Verdict(
            None,
            f"no verdict yet: {n:,} of {thresholds.min_evaluations:,} evaluations needed in the last {window}",
        )
    if n == 0:
        return Verdict(True, "no traffic in the window, and min_evaluations is 0")
    comparable = baseline is not None and baseline.evaluations >= max(thresholds.min_evaluations, 1)
    shared = []
    rate = counts.error_rate
    if rate > thresholds.max_error_rate:
        if (
            comparable
            and baseline is not None
            and not _significantly_worse(
                counts.errors, n, baseline.errors, baseline.evaluations, thresholds.significance
            )
        ):
            shared.append(f"error rate {rate:.1%} (stable {baseline.error_rate:.1%})")
        else:
            versus = f" (stable: {baseline.error_rate:.1%})" if comparable and baseline else ""
            return Verdict(
                False,
                f"error rate {rate:.1%} > {thresholds.max_error_rate:.1%} over {n:,} evaluations{versus}",
            )
    if counts.timeouts > thresholds.max_timeouts:
        if (
            comparable
            and baseline is not None
            and not _significantly_worse(
                counts.timeouts, n, baseline.timeouts, baseline.evaluations, thresholds.significance
            )
        ):
            shared.append(f"{counts.timeouts:,} timeouts (stable {baseline.timeouts:,})")
        else:
            return Verdict(
                False,
                f"timeouts {counts.timeouts:,} > {thresholds.max_timeouts:,} over {n:,} evaluations",
            )
    latency = counts.avg_latency_us
    if latency > thresholds.max_latency_us:
        if comparable and baseline is not None and latency <= baseline.avg_latency_us * thresholds.max_latency_ratio:
            shared.append(f"average latency {latency:,.0f}us (stable {baseline.avg_latency_us:,.0f}us)")
        else:
            return Verdict(
                False,
                f"average latency {latency:,.0f}us > {thresholds.max_latency_us:,.0f}us over {n:,} evaluations",
            )
    if shared:
        return Verdict(True, "healthy relative to stable; shared with the stable version: " + ", ".join(shared))
    return Verdict(True, f"healthy over {n:,} evaluations in the last {window}")
