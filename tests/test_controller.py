"""The controller: tick() does all time-driven work; start_controller runs it on one background thread."""

from __future__ import annotations

import threading
import time

from freezegun import freeze_time

from rule_engine import ABTest, Canary, DeploymentEvent, DeploymentState, RuleEngine, Scheduled
from rule_engine.testing import ManualClock
from tests._support_health import START, bundle, drive, manager_with_stable


def test_healthy_canary_is_walked_to_active_by_tick_under_real_traffic() -> None:
    """Stage by stage, tick advances a healthy canary only once each stage's duration has passed."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable()
        candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), Canary((10, 25, 50, 100), 120))
        manager.activate_deployment(candidate)
        engine = RuleEngine(manager)
        seen = []
        for stage in range(4):
            status = manager.get_rollout_status()
            assert status is not None
            seen.append(status.percentage)
            drive(engine, 4000, prefix=f"s{stage}-")
            clock.tick(60)
            assert manager.tick().actions == ()  # healthy, but the stage lasts 120s
            clock.tick(61)
            report = manager.tick()
            assert report.actions == (f"advanced {candidate}",)
            if manager.get_rollout_status() is None:
                break
        assert seen == [10, 25, 50]
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.state is DeploymentState.ACTIVE
        assert manager.get_active_version_id() == candidate
        old = manager.get_deployment_info(stable)
        assert old is not None
        assert old.state is DeploymentState.SUPERSEDED
        assert {d.version_id for d in drive(engine, 200)} == {candidate}


def test_tick_activates_due_scheduled_deployments() -> None:
    """A scheduled version waits for its time, then the next tick activates it."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable()
        later = manager.prepare_deployment(bundle("2.0.0"), Scheduled(time.time() + 3600))
        assert manager.tick().actions == ()
        clock.tick(3599)
        manager.tick()
        assert manager.get_active_version_id() == stable
        clock.tick(2)
        assert manager.tick().actions == (f"activated scheduled {later}",)
        assert manager.get_active_version_id() == later


def test_tick_ends_ab_test_but_keeps_the_split_until_concluded() -> None:
    """After its duration the A/B test ends; both variants keep serving until conclude_experiment."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable()
        b = manager.prepare_deployment(bundle("2.0.0"), ABTest(0.5, 600))
        manager.activate_deployment(b)
        engine = RuleEngine(manager)
        clock.tick(601)
        assert "ended A/B test" in manager.tick().actions
        status = manager.get_rollout_status()
        assert status is not None
        assert status.ended_at is not None
        assert status.holding == "test ended; waiting for conclude_experiment(winner)"
        assert {d.version_id for d in drive(engine, 500)} == {stable, b}
        manager.tick()
        assert manager.get_rollout_status() is not None
        assert manager.conclude_experiment(b) == b
        assert manager.get_active_version_id() == b


def test_background_controller_ticks_on_one_thread_and_stops() -> None:
    """start_controller calls tick in the background; stop() ends its one thread."""
    clock = ManualClock()
    manager, _ = manager_with_stable(clock=clock)
    candidate = manager.prepare_deployment(bundle("2.0.0"), Scheduled(clock.now() + 10))
    before = threading.active_count()
    controller = manager.start_controller(interval=0.01)
    assert threading.active_count() == before + 1
    activated = threading.Event()
    threads: list[str] = []

    def on_swap(event: DeploymentEvent) -> None:
        if event.action == "activate" and event.version_id == candidate:
            threads.append(threading.current_thread().name)
            activated.set()

    manager.subscribe("after_swap", on_swap)
    clock.advance(11)
    assert activated.wait(timeout=20), "the background controller did not activate the due version"
    assert manager.get_active_version_id() == candidate
    assert len(threads) == 1  # activated once
    assert threads[0] != threading.main_thread().name  # by the controller's thread
    controller.stop()
    assert not controller.running


def test_background_controller_is_a_context_manager() -> None:
    """``with manager.start_controller():`` stops the thread on exit."""
    clock = ManualClock()
    manager, _ = manager_with_stable(clock=clock)
    with manager.start_controller(interval=0.01) as controller:
        assert controller.running
    assert not controller.running
    manager.close()
