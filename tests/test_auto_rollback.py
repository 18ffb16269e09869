"""Automatic rollback: an unhealthy candidate (or newly active version) is rolled back by the call that found it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from freezegun import freeze_time
from structlog.testing import capture_logs

from rule_engine import (
    BlueGreen,
    Canary,
    DeploymentEvent,
    DeploymentManager,
    DeploymentState,
    HealthThresholds,
    RuleEngine,
)
from tests._support_health import (
    BUNDLES,
    START,
    THRESHOLDS,
    ManualClock,
    bundle,
    drive,
    gateway_traffic,
    manager_with_stable,
)

CANARY = Canary((10, 25, 50, 100), 60)


def _canary(manager: DeploymentManager, *, checks_amount: bool = False) -> str:
    candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=checks_amount), CANARY)
    manager.activate_deployment(candidate)
    return candidate


def _watch(manager: DeploymentManager) -> list[DeploymentEvent]:
    events: list[DeploymentEvent] = []
    manager.subscribe("on_rollback", events.append)
    return events


@pytest.mark.parametrize(
    ("figures", "reason"),
    [
        ({"evaluations": 2000, "errors": 80}, "error rate 4.0% > 1.0% over 2,000 evaluations"),
        (
            {"evaluations": 2000, "avg_latency_us": 25_000.0},
            "average latency 25,000us > 10,000us over 2,000 evaluations",
        ),
        ({"evaluations": 2000, "timeouts": 150}, "timeouts 150 > 100 over 2,000 evaluations"),
    ],
    ids=["error-rate", "latency", "timeouts"],
)
def test_unhealthy_candidate_is_rolled_back_by_update_health_metrics(figures: dict[str, Any], reason: str) -> None:
    """A candidate reported unhealthy is ROLLED_BACK before update_health_metrics returns, with its reason."""
    with freeze_time(START):
        manager, stable = manager_with_stable()
        candidate = _canary(manager)
        rollbacks = _watch(manager)
        with capture_logs() as logs:
            assert manager.update_health_metrics(candidate, **figures) is False
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK
        assert info.failure_reason == reason
        assert manager.get_rollout_status() is None
        assert manager.get_active_version_id() == stable
        automatic = [e for e in logs if e["event"] == "rollback.automatic"]
        assert len(automatic) == 1
        assert automatic[0]["version_id"] == candidate
        assert automatic[0]["reason"] == reason
        assert [(e.version_id, e.automatic, e.reason) for e in rollbacks] == [(candidate, True, reason)]


def test_deltas_accumulate_within_the_window() -> None:
    """update_health_metrics takes deltas: two reports of 1,000 add up to a verdict on 2,000."""
    with freeze_time(START) as clock:
        manager, _ = manager_with_stable()
        candidate = _canary(manager)
        assert manager.update_health_metrics(candidate, 100, 4) is None  # 100 < min_evaluations
        clock.tick(10)
        assert manager.update_health_metrics(candidate, 1900, 76) is False
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.failure_reason == "error rate 4.0% > 1.0% over 2,000 evaluations"
        assert info.health_metrics.total_evaluations == 2000
        assert info.health_metrics.error_count == 80


def test_candidate_failing_on_real_traffic_is_rolled_back_by_tick() -> None:
    """Errors counted by RuleEngine on the candidate roll it back at the next tick; callers get decisions."""
    with freeze_time(START):
        manager, stable = manager_with_stable()
        candidate = _canary(manager, checks_amount=True)
        engine = RuleEngine(manager)
        rollbacks = _watch(manager)
        answers = drive(engine, 20_000, error_every=5)  # 20% of events break the candidate's rule
        assert all(d.error is None for d in answers)  # errors on the candidate are answered by stable
        assert {d.version_id for d in answers} == {stable, candidate}
        with capture_logs() as logs:
            report = manager.tick()
        assert len(report.actions) == 1
        assert report.actions[0].startswith(f"rolled back {candidate}: ")
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK
        found = re.fullmatch(
            r"error rate (\d+\.\d)% > 1\.0% over ([\d,]+) evaluations \(stable: 0\.0%\)", info.failure_reason or ""
        )
        assert found is not None, info.failure_reason
        assert 15 < float(found[1]) < 25
        assert 1500 < int(found[2].replace(",", "")) < 2500
        assert [e["event"] for e in logs if e["event"].startswith("rollback.")] == [
            "rollback.completed",
            "rollback.automatic",
        ]
        assert len(rollbacks) == 1
        assert rollbacks[0].automatic
        assert {d.version_id for d in drive(engine, 1000)} == {stable}


def test_timeouts_on_real_traffic_roll_back_the_candidate() -> None:
    """With a deadline no evaluation meets, every evaluation is a timeout and the candidate is rolled back."""
    clock = ManualClock()
    manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True, clock=clock, evaluation_deadline_us=0.0)
    stable = manager.prepare_deployment(bundle("1.0.0"))
    manager.activate_deployment(stable)
    candidate = _canary(manager)
    engine = RuleEngine(manager)
    drive(engine, 5000)
    # The stable version times out as much (a shared failure), so compare absolute figures only:
    # the candidate got ~10% of 5,000 evaluations, all over the deadline.
    verdict = manager.health_verdict(candidate)
    assert verdict.healthy is True
    assert "shared with the stable version" in verdict.reason
    manager2 = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True, clock=clock)
    stable2 = manager2.prepare_deployment(bundle("1.0.0"))
    manager2.activate_deployment(stable2)
    manager2.configure(evaluation_deadline_us=0.0)  # applies to versions that start serving from now on: the candidate
    slow = manager2.prepare_deployment(bundle("2.0.0"), CANARY)
    manager2.activate_deployment(slow)
    drive(RuleEngine(manager2), 5000)
    report = manager2.tick()
    info = manager2.get_deployment_info(slow)
    assert info is not None
    assert info.state is DeploymentState.ROLLED_BACK
    assert info.failure_reason is not None
    assert info.failure_reason.startswith("timeouts ")
    assert report.actions
    assert "timeouts" in report.actions[0]


def test_no_verdict_below_min_evaluations_holds_and_never_rolls_back() -> None:
    """Fewer than min_evaluations in the window: no verdict, the stage holds, status says why, no rollback."""
    with freeze_time(START) as clock:
        manager, _ = manager_with_stable()
        candidate = _canary(manager)
        assert manager.update_health_metrics(candidate, 199, 199) is None  # 100% errors, but thin data
        assert manager.get_health_status(candidate) is None
        for _ in range(10):
            clock.tick(61)
            report = manager.tick()
            assert report.actions == ()
        status = manager.get_rollout_status()
        assert status is not None
        assert status.percentage == 10
        assert status.state is DeploymentState.ROLLING_OUT
        assert status.holding == "no verdict yet: 0 of 200 evaluations needed in the last 300s"
        assert any("no verdict yet" in h for h in report.holding)
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLING_OUT
        assert info.failure_reason is None


def test_thin_data_in_window_reports_the_count() -> None:
    """Status names how many evaluations the window has and how many a verdict needs."""
    with freeze_time(START):
        manager, _ = manager_with_stable()
        candidate = _canary(manager)
        manager.update_health_metrics(candidate, 150, 0)
        status = manager.get_rollout_status()
        assert status is not None
        assert status.verdict.healthy is None
        assert status.holding == "no verdict yet: 150 of 200 evaluations needed in the last 300s"


def test_recent_burst_of_errors_after_hours_of_good_traffic_is_unhealthy() -> None:
    """The verdict is on the recent window: hours of good traffic do not hide a new burst of errors."""
    with freeze_time(START) as clock:
        manager, _ = manager_with_stable(thresholds=HealthThresholds(min_evaluations=200, max_error_rate=0.01))
        candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 24 * 3600))
        manager.activate_deployment(candidate)
        for _ in range(3 * 60):  # three hours, 1,000 clean evaluations a minute
            assert manager.update_health_metrics(candidate, 1000, 0) is not False
            clock.tick(60)
        assert manager.update_health_metrics(candidate, 1000, 100) is False  # 10% in the last minute
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK
        assert info.health_metrics.total_evaluations == 181_000  # lifetime error rate: 0.06%
        assert info.failure_reason == "error rate 2.0% > 1.0% over 5,000 evaluations"  # the last 300 seconds


def test_failure_shared_with_stable_does_not_blame_the_candidate() -> None:
    """Same high error rate on stable and candidate (bad traffic): the candidate is not rolled back."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
        stable = manager.prepare_deployment(bundle("1.0.0", checks_amount=True))
        manager.activate_deployment(stable)
        candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), Canary((10, 50, 100), 60))
        manager.activate_deployment(candidate)
        engine = RuleEngine(manager)
        drive(engine, 10_000, error_every=20)  # 5% bad events for both versions
        verdict = manager.health_verdict(candidate)
        assert verdict.healthy is True
        assert "shared with the stable version: error rate" in verdict.reason
        clock.tick(61)
        assert manager.tick().actions == (f"advanced {candidate}",)
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLING_OUT


def test_candidate_much_worse_than_stable_is_blamed() -> None:
    """A candidate whose error rate is significantly above stable's is rolled back, the reason names both."""
    with freeze_time(START):
        manager, stable = manager_with_stable()
        candidate = _canary(manager)
        manager.update_health_metrics(stable, 10_000, 300)  # stable: 3% (already above the threshold)
        assert manager.update_health_metrics(candidate, 1000, 80) is False  # candidate: 8%
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK
        assert info.failure_reason == "error rate 8.0% > 1.0% over 1,000 evaluations (stable: 3.0%)"


def test_manual_mode_reports_and_holds_for_a_person() -> None:
    """auto_rollback=False: an unhealthy candidate is reported, never advanced by tick, and waits."""
    with freeze_time(START) as clock:
        manager, _ = manager_with_stable(auto_rollback=False)
        candidate = _canary(manager)
        with capture_logs() as logs:
            assert manager.update_health_metrics(candidate, 2000, 80) is False
        assert [e["event"] for e in logs] == ["health.unhealthy", "rollout.held"]
        assert logs[0]["auto_rollback"] is False
        assert [e.action for e in manager.audit_log(candidate)][-1] == "hold"  # stored: survives a restart
        clock.tick(61)
        assert manager.tick().actions == ()
        status = manager.get_rollout_status()
        assert status is not None
        assert status.percentage == 10
        assert status.holding == "unhealthy: error rate 4.0% > 1.0% over 2,000 evaluations; waiting for a person"
        for _ in range(5):  # the bad figures leave the window: the flag stays until a person acts
            clock.tick(120)
            assert manager.tick().actions == ()
        status = manager.get_rollout_status()
        assert status is not None
        assert status.percentage == 10
        assert status.verdict.healthy is None
        assert status.holding == "was unhealthy: error rate 4.0% > 1.0% over 2,000 evaluations; waiting for a person"
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLING_OUT
        manager.rollback(reason="looked at the dashboard")
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK


def test_newly_active_blue_green_version_unhealthy_within_bake_is_rolled_back() -> None:
    """A blue-green version that turns unhealthy within bake_secs goes back to the previous version."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable()
        new = manager.prepare_deployment(bundle("2.0.0"), BlueGreen())
        manager.activate_deployment(new)
        rollbacks = _watch(manager)
        clock.tick(60)
        assert manager.update_health_metrics(new, 1000, 50) is False
        assert manager.get_active_version_id() == stable
        info = manager.get_deployment_info(new)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK
        assert info.failure_reason == "error rate 5.0% > 1.0% over 1,000 evaluations"
        assert len(rollbacks) == 1
        assert rollbacks[0].serving_after[0] == stable


def test_active_version_past_bake_is_not_rolled_back() -> None:
    """After bake_secs a version that turns unhealthy is reported but stays (there is nothing to compare)."""
    with freeze_time(START) as clock:
        manager, _ = manager_with_stable()
        new = manager.prepare_deployment(bundle("2.0.0"))
        manager.activate_deployment(new)
        clock.tick(THRESHOLDS.bake_secs + 1)
        assert manager.update_health_metrics(new, 1000, 50) is False
        assert manager.get_active_version_id() == new


def test_completed_canary_with_shared_failure_survives_bake() -> None:
    """A canary completed within bake_secs is compared with the version it replaced, not blamed alone."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
        stable = manager.prepare_deployment(bundle("1.0.0", checks_amount=True))
        manager.activate_deployment(stable)
        candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), Canary((50, 100), 30))
        manager.activate_deployment(candidate)
        engine = RuleEngine(manager)
        # Both versions fail the same 5% of events. Each arm now counts only its own events (D4), so
        # this is a fair one-sided z-test at 5%: keys "a0".."a3999" happened to split 5.8% / 4.2%
        # (a 1-in-100 draw, once hidden by stable's double-counted fallbacks); these split evenly.
        drive(engine, 4000, error_every=20, prefix="s")
        clock.tick(31)
        assert manager.tick().actions == (f"advanced {candidate}",)
        drive(engine, 4000, error_every=20, prefix="b")
        assert manager.tick().actions == ()
        assert manager.get_active_version_id() == candidate


def test_broken_gateway_bundle_is_rolled_back_from_real_traffic_alone() -> None:
    """gateway-v3-broken as a canary behind RuleEngine traffic: rolled back by tick, no caller sees an exception."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(auto_rollback=True)  # the default thresholds
        stable = manager.prepare_deployment(BUNDLES / "gateway-v2.json")
        manager.activate_deployment(stable)
        broken = manager.prepare_deployment(BUNDLES / "gateway-v3-broken.json", Canary((20, 50, 100), 60))
        manager.activate_deployment(broken)
        engine = RuleEngine(manager)
        rollbacks = _watch(manager)
        answers = []
        with capture_logs() as logs:
            for round_ in range(12):
                answers += [engine.evaluate(e) for e in gateway_traffic(20, prefix=f"r{round_}")]
                clock.tick(10)
                manager.tick()
        assert all(isinstance(d.decision, str) and d.decision for d in answers)
        assert {d.version_id for d in answers} >= {stable, broken}
        info = manager.get_deployment_info(broken)
        assert info is not None
        assert info.state is DeploymentState.ROLLED_BACK
        assert info.failure_reason is not None
        assert info.failure_reason.startswith("error rate ")
        assert "(stable: " in info.failure_reason
        assert any(e["event"] == "rollback.automatic" and e["version_id"] == broken for e in logs)
        assert len(rollbacks) == 1
        assert rollbacks[0].automatic
        assert manager.get_rollout_status() is None
        assert {engine.evaluate(e).version_id for e in gateway_traffic(2, prefix="after")} == {stable}
