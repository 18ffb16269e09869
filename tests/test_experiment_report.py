"""A/B report: per-variant figures and a two-proportion z-test that finds a real difference."""

from __future__ import annotations

import pytest
from freezegun import freeze_time

from rule_engine import ABTest, DeploymentManager, InvalidTransitionError, RuleEngine
from tests._support_health import START, bundle, drive, manager_with_stable


def _ab(checks_amount: bool) -> tuple[DeploymentManager, str, str]:
    manager, a = manager_with_stable(auto_rollback=False)
    b = manager.prepare_deployment(bundle("2.0.0", checks_amount=checks_amount), ABTest(0.5, 3600))
    manager.activate_deployment(b)
    return manager, a, b


def test_known_difference_is_significant() -> None:
    """A at 0.5% errors vs B at 3% over thousands of evaluations: significant, tiny p-value."""
    with freeze_time(START):
        manager, a, b = _ab(checks_amount=False)
        manager.update_health_metrics(a, 4000, 20, 0, 120.0)
        manager.update_health_metrics(b, 4000, 120, 0, 130.0)
        report = manager.get_experiment_report()
        assert (report.a.version_id, report.b.version_id) == (a, b)
        assert (report.a.error_rate, report.b.error_rate) == (0.005, 0.03)
        assert report.significant
        assert report.p_value < 1e-10
        assert report.z_score > 0  # B is the worse one
        assert report.a.traffic_share == pytest.approx(0.5)
        assert "significant" in report.summary
        assert report.to_dict()["significant"] is True


def test_equal_rates_are_not_significant() -> None:
    """Both variants at 1% errors: not significant."""
    with freeze_time(START):
        manager, a, b = _ab(checks_amount=False)
        manager.update_health_metrics(a, 5000, 50)
        manager.update_health_metrics(b, 5000, 50)
        report = manager.get_experiment_report()
        assert not report.significant
        assert report.p_value == pytest.approx(1.0)


def test_report_from_real_traffic_has_decisions_and_latency() -> None:
    """From RuleEngine traffic: decision distribution per variant, latency percentiles, B's errors found."""
    manager, _a, _b = _ab(checks_amount=True)
    engine = RuleEngine(manager)
    answers = drive(engine, 20_000, error_every=33)  # ~3% of events break B's rule; A has no such rule
    assert all(d.error is None for d in answers)
    report = manager.get_experiment_report()
    assert report.a.errors == 0
    assert report.b.errors > 200
    assert report.significant
    assert report.a.decisions["deny"] > 0
    assert report.b.decisions["deny"] > 0
    assert sum(report.b.decisions.values()) == report.b.evaluations - report.b.errors
    assert report.a.p50_latency_us is not None
    assert report.a.p99_latency_us is not None
    assert report.a.p50_latency_us <= report.a.p99_latency_us


def test_no_report_without_an_ab_test() -> None:
    """Asking for a report with no A/B test in progress is an InvalidTransitionError."""
    manager, _ = manager_with_stable()
    with pytest.raises(InvalidTransitionError, match="no A/B test"):
        manager.get_experiment_report()
