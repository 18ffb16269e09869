"""Health: thresholds, counts, the verdict (thin data, absolute limits, relative comparison), figures."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from freezegun import freeze_time

from rule_engine import Canary, HealthThresholds, RuleEngine
from rule_engine.health.verdict import judge, two_proportion_z_test
from rule_engine.serving.counts import HealthCounts
from tests._support_health import START, bundle, drive, manager_with_stable

T = HealthThresholds()


def test_reference_defaults() -> None:
    """Defaults: 1% errors, 10,000us average latency, 100 timeouts, 200 evaluations for a verdict."""
    assert (T.max_error_rate, T.max_latency_us, T.max_timeouts, T.min_evaluations) == (0.01, 10_000, 100, 200)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_error_rate": 1.5}, {"min_evaluations": -1}, {"bucket_secs": 600.0}, {"significance": 0.0}],
)
def test_invalid_thresholds_are_refused(kwargs: dict[str, float]) -> None:
    """Out-of-range thresholds raise ValueError."""
    with pytest.raises(ValueError, match=r"must|need"):
        HealthThresholds(**kwargs)  # type: ignore[arg-type]


def test_no_verdict_below_min_evaluations() -> None:
    """Below min_evaluations there is no verdict, however bad the figures."""
    verdict = judge(HealthCounts(199, 199), T)
    assert verdict.healthy is None
    assert verdict.reason == "no verdict yet: 199 of 200 evaluations needed in the last 300s"
    assert judge(HealthCounts(200, 0), T).healthy is True


@pytest.mark.parametrize(
    ("counts", "reason"),
    [
        (HealthCounts(2000, 80), "error rate 4.0% > 1.0% over 2,000 evaluations"),
        (HealthCounts(2000, 0, 101), "timeouts 101 > 100 over 2,000 evaluations"),
        (HealthCounts(2000, 0, 0, 2000 * 12_000.0), "average latency 12,000us > 10,000us over 2,000 evaluations"),
    ],
)
def test_absolute_limits(counts: HealthCounts, reason: str) -> None:
    """Each limit breached gives an unhealthy verdict that says what and by how much."""
    verdict = judge(counts, T)
    assert verdict.healthy is False
    assert verdict.reason == reason


def test_relative_comparison_shared_failures_are_not_blamed() -> None:
    """A rate or latency the stable version shares over the same window does not make the candidate unhealthy."""
    baseline = HealthCounts(10_000, 500, 900, 10_000 * 15_000.0)
    verdict = judge(HealthCounts(1000, 52, 95, 1000 * 16_000.0), T, baseline)
    assert verdict.healthy is True
    assert verdict.reason.startswith("healthy relative to stable; shared with the stable version: error rate 5.2%")


def test_relative_comparison_blames_a_much_worse_candidate() -> None:
    """Significantly more errors, or latency beyond max_latency_ratio x stable's, is blamed on the candidate."""
    assert judge(HealthCounts(1000, 80), T, HealthCounts(10_000, 500)).healthy is False
    slow = judge(HealthCounts(1000, 0, 0, 1000 * 40_000.0), T, HealthCounts(10_000, 0, 0, 10_000 * 15_000.0))
    assert slow.healthy is False
    assert slow.reason.startswith("average latency 40,000us > 10,000us")


def test_thin_baseline_is_not_compared() -> None:
    """A stable version with too little data in the window is no excuse: absolute limits apply."""
    assert judge(HealthCounts(1000, 50), T, HealthCounts(100, 100)).healthy is False


def test_z_test_matches_a_hand_computed_value() -> None:
    """3.0% of 1,000 vs 0.5% of 1,000: pooled z = 4.2632, two-sided p = 2.01e-5."""
    z, p = two_proportion_z_test(30, 1000, 5, 1000)
    pooled = 35 / 2000
    assert z == pytest.approx((0.03 - 0.005) / math.sqrt(pooled * (1 - pooled) * 0.002))
    assert z == pytest.approx(4.263239, rel=1e-6)
    assert p == pytest.approx(2.01485e-5, rel=1e-4)
    assert two_proportion_z_test(10, 1000, 10, 1000) == (0.0, 1.0)
    assert two_proportion_z_test(0, 0, 5, 10) == (0.0, 1.0)


def test_z_test_agrees_with_scipy() -> None:
    """Where scipy is importable (here or in the system python), the p-value agrees with norm.sf."""
    z, p = two_proportion_z_test(37, 2500, 21, 2400)
    try:
        from scipy.stats import norm  # type: ignore[import-not-found, import-untyped, unused-ignore]

        expected = float(2 * norm.sf(abs(z)))
    except ImportError:
        code = f"from scipy.stats import norm; print(repr(float(2 * norm.sf({abs(z)!r}))))"
        for python in (str(Path(sys.base_prefix) / "bin" / "python3"), shutil.which("python3")):
            run = subprocess.run([python or "python3", "-c", code], capture_output=True, text=True, check=False)
            if run.returncode == 0:
                break
        else:
            pytest.skip("scipy is not importable")
        expected = float(run.stdout)
    assert p == pytest.approx(expected, rel=1e-9)


def test_percentiles_from_the_histogram() -> None:
    """p50/p99 come from the power-of-two histogram, exact to within a bucket."""
    histogram = [0] * 64
    histogram[11] = 99  # [1,024ns, 2,048ns)
    histogram[21] = 1  # [1.05ms, 2.1ms)
    counts = HealthCounts(100, 0, 0, 0.0, tuple(histogram))
    p50 = counts.percentile_us(0.5)
    p99 = counts.percentile_us(0.99)
    p999 = counts.percentile_us(0.999)
    assert p50 is not None
    assert p99 is not None
    assert p999 is not None
    assert 1.024 <= p50 < 2.048
    assert 1.024 <= p99 <= 2.048
    assert 1048.576 <= p999 < 2097.152
    assert HealthCounts().percentile_us(0.5) is None


def test_health_metrics_fields() -> None:
    """HealthMetrics: lifetime totals, averages, error rate, last check, p50/p99 from real traffic."""
    with freeze_time(START):
        manager, _ = manager_with_stable(auto_rollback=False)
        candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), Canary((50, 100), 60))
        manager.activate_deployment(candidate)
        drive(RuleEngine(manager), 4000, error_every=4)
        manager.update_health_metrics(candidate, 1000, 10, 3, 250.0)
        info = manager.get_deployment_info(candidate)
        assert info is not None
        m = info.health_metrics
        to_candidate = [i for i in range(4000) if manager.route(f"u{i}") is manager.snapshot.candidate]
        assert 1800 < len(to_candidate) < 2200  # about half, by the rollout's own cohort
        assert m.total_evaluations == len(to_candidate) + 1000
        assert m.error_count == sum(1 for i in to_candidate if i % 4 == 0) + 10  # each bad one fails there
        assert m.timeout_count == 3
        assert m.error_rate == pytest.approx(m.error_count / m.total_evaluations)
        assert m.avg_latency_us >= 250.0 * 1000 / m.total_evaluations
        assert m.last_check is not None
        assert m.p50_latency_us is not None
        assert m.p99_latency_us is not None
        assert m.verdict is False
        data = m.to_dict()
        assert data["total_evaluations"] == m.total_evaluations
        assert data["healthy"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1,), "evaluations must be an integer within"),
        ((10, -1), "errors must be an integer within"),
        ((10, 11), "errors and timeouts cannot exceed evaluations"),
        ((10, 0, 11), "errors and timeouts cannot exceed evaluations"),
        ((10, 0, 0, -5.0), "avg_latency_us must be a finite number within"),
        ((10, 0, 0, math.nan), "avg_latency_us must be a finite number within"),
        ((1.5,), "evaluations must be an integer within"),
    ],
)
def test_update_health_metrics_validates(args: tuple[float, ...], message: str) -> None:
    """Negative figures, errors above evaluations and non-numbers are refused and nothing is added."""
    manager, stable = manager_with_stable()
    with pytest.raises(ValueError, match=message):
        manager.update_health_metrics(stable, *args)  # type: ignore[arg-type]
    info = manager.get_deployment_info(stable)
    assert info is not None
    assert info.health_metrics.total_evaluations == 0


def test_update_health_metrics_figures_are_deltas() -> None:
    """Each report adds to the totals (deltas, not cumulative figures)."""
    manager, stable = manager_with_stable()
    manager.update_health_metrics(stable, 100, 1, 0, 100.0)
    manager.update_health_metrics(stable, 100, 1, 0, 300.0)
    info = manager.get_deployment_info(stable)
    assert info is not None
    assert info.health_metrics.total_evaluations == 200
    assert info.health_metrics.error_count == 2
    assert info.health_metrics.avg_latency_us == pytest.approx(200.0)
