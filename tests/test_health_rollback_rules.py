"""Automatic rollback rules (D5): only the version a deployment brought in, once per incident; else hold.

The cascade found by the probes: after a broken canary was rolled back, the controller judged the
reinstated versions (still in their bake time) against baselines with no recent traffic, and rolled
back four good versions in two seconds, ending on the oldest.
"""

from __future__ import annotations

from typing import Any

from freezegun import freeze_time
from structlog.testing import capture_logs

from rule_engine import BlueGreen, Canary, DeploymentManager, DeploymentState, RuleEngine
from tests._support_health import START, THRESHOLDS, bundle, drive

CANARY = Canary((50, 100), 60)


def _broken(version: str) -> dict[str, Any]:
    """A bundle whose rule fails on every event (compares the string user_id with a number)."""
    broken = bundle(version)
    broken["rules"].append(
        {
            "id": "broken",
            "priority": 200,
            "when": {"field": "user_id", "op": "gt", "value": 5},
            "then": {"decision": "deny", "reason": "never"},
        }
    )
    return broken


def _rollbacks(manager: DeploymentManager) -> list[str]:
    return [e.version_id for e in manager.audit_log() if e.action == "rollback" and e.to_state == "rolled_back"]


def test_a_broken_canary_is_rolled_back_once_and_nothing_cascades() -> None:
    """v1..v4 deployed in quick succession, v5 a broken canary: one rollback (v5), v4 keeps serving."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
        versions = []
        for n in range(1, 5):  # each still in its bake time when the canary fails
            versions.append(manager.prepare_deployment(bundle(f"{n}.0.0", checks_amount=True)))
            manager.activate_deployment(versions[-1])
            clock.tick(1)
        v5 = manager.prepare_deployment(_broken("5.0.0"), CANARY)
        manager.activate_deployment(v5)
        engine = RuleEngine(manager)
        drive(engine, 2000, error_every=18, prefix="canary-")  # the traffic itself: 5.6% errors everywhere
        report = manager.tick()
        assert [a.split(":")[0] for a in report.actions] == [f"rolled back {v5}"]
        for round_ in range(4):  # more traffic, more ticks: the reinstated v4 is not judged for rollback
            clock.tick(1)
            drive(engine, 1000, error_every=18, prefix=f"after-{round_}-")
            assert manager.tick().actions == ()
        assert manager.get_active_version_id() == versions[-1]
        assert _rollbacks(manager) == [v5]
        verdict = manager.health_verdict(versions[-1])
        assert verdict.healthy is False  # still reported, only never acted on


def test_a_version_a_rollback_reinstated_is_never_rolled_back_automatically() -> None:
    """v2 rolled back to v1 within v1's bake time: v1 failing afterwards is reported, not rolled back to v0."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
        v0 = manager.prepare_deployment(bundle("0.1.0"))
        manager.activate_deployment(v0)
        v1 = manager.prepare_deployment(bundle("1.0.0", checks_amount=True))
        manager.activate_deployment(v1)
        engine = RuleEngine(manager)
        drive(engine, 1000, prefix="v1-")
        clock.tick(5)
        v2 = manager.prepare_deployment(_broken("2.0.0"), BlueGreen())
        manager.activate_deployment(v2)
        drive(engine, 1000, prefix="v2-")
        assert [a.split(":")[0] for a in manager.tick().actions] == [f"rolled back {v2}"]
        assert manager.get_active_version_id() == v1
        clock.tick(5)
        drive(engine, 1000, error_every=2, prefix="bad-")  # v1 fails half its events now
        with capture_logs() as logs:
            assert manager.tick().actions == ()
        assert manager.get_active_version_id() == v1
        assert _rollbacks(manager) == [v2]
        assert not [e for e in logs if e["event"] == "rollback.automatic"]
        info = manager.get_deployment_info(v1)
        assert info is not None
        assert info.state is DeploymentState.ACTIVE


def test_a_rollback_to_a_version_no_healthier_holds_and_says_so() -> None:
    """The failure is the traffic's: the target failed as often over its lifetime. Hold, in tick's report, log once."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
        v1 = manager.prepare_deployment(bundle("1.0.0", checks_amount=True))
        manager.activate_deployment(v1)
        engine = RuleEngine(manager)
        drive(engine, 2000, error_every=16, prefix="old-")  # 6% errors, long before the window
        manager.tick()  # counts are bucketed when drained
        clock.tick(THRESHOLDS.window_secs * 3)
        v2 = manager.prepare_deployment(bundle("2.0.0", checks_amount=True))
        manager.activate_deployment(v2)
        drive(engine, 2000, error_every=16, prefix="new-")
        with capture_logs() as logs:
            first = manager.tick()
            second = manager.tick()
        assert first.actions == second.actions == ()
        assert len(first.holding) == 1
        assert first.holding == second.holding
        text = first.holding[0]
        assert text.startswith(f"{v2}: unhealthy (error rate ")
        assert (
            f"its rollback target {v1} is no healthier (6.2% errors over 2,000 evaluations over its lifetime)" in text
        )
        assert "rule-engine rollback" in text
        assert manager.get_active_version_id() == v2
        assert _rollbacks(manager) == []
        held = [e for e in logs if e["event"] == "rollback.held"]
        assert len(held) == 1
        assert held[0]["version_id"] == v2


def test_a_target_with_a_healthy_lifetime_is_returned_to() -> None:
    """Outside the window the target's lifetime is the evidence: healthy there, so the broken version goes back."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
        v1 = manager.prepare_deployment(bundle("1.0.0"))
        manager.activate_deployment(v1)
        engine = RuleEngine(manager)
        drive(engine, 2000, prefix="old-")
        manager.tick()  # counts are bucketed when drained
        clock.tick(THRESHOLDS.window_secs * 3)
        v2 = manager.prepare_deployment(_broken("2.0.0"))
        manager.activate_deployment(v2)
        drive(engine, 500, prefix="new-")
        assert [a.split(":")[0] for a in manager.tick().actions] == [f"rolled back {v2}"]
        assert manager.get_active_version_id() == v1


def test_no_cascade_even_after_the_rolled_back_version_left_history() -> None:
    """D5 edge: the rollback is recorded with the state, so evicting the rolled-back version cannot make the
    reinstated one bake again (and be rolled back onto the one before it)."""
    from rule_engine import DeploymentManager, HealthThresholds
    from rule_engine.testing import ManualClock
    from tests._support_deployment import mini_bundle

    clock = ManualClock()
    manager = DeploymentManager(
        clock=clock, max_history=3, auto_rollback=True, thresholds=HealthThresholds(min_evaluations=10)
    )
    v0, v1, v2 = (manager.prepare_deployment(mini_bundle(f"{n}.0.0")) for n in (0, 1, 2))
    for version in (v0, v1, v2):
        manager.activate_deployment(version)
        clock.advance(1)
    manager.update_health_metrics(v2, evaluations=100, errors=90)  # v2 bakes, fails: rolled back to v1
    assert manager.get_active_version_id() == v1
    for n in (3, 4, 5):  # staged versions push the rolled-back v2 out of history
        manager.prepare_deployment(mini_bundle(f"{n}.0.0"))
    assert v2 not in manager.get_deployment_history()
    manager.update_health_metrics(v1, evaluations=100, errors=90)
    manager.tick()
    assert manager.get_active_version_id() == v1  # held, not rolled back onto v0
    assert sum(e.action == "rollback" and e.to_state == "rolled_back" for e in manager.audit_log()) == 1
