"""The health window is ``[now - window, now]`` (D7): clock jumps forward and back during rollouts.

Buckets written while a clock ran ahead never count as recent; no canary stage is advanced twice
and no A/B test ended twice because the clock jumped.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from rule_engine import ABTest, Canary, DeploymentManager, RuleEngine
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import StateStore
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_health import START, THRESHOLDS, bundle, drive, manager_with_stable

DAY = timedelta(days=1)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    """Each store backend."""
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "state.db")


def test_store_health_until_leaves_later_buckets_out(store: StateStore) -> None:
    """health(since, until) sums buckets starting within [since, until]; without bounds, lifetime totals."""
    for start in (100.0, 105.0, 110.0, 90_000.0):
        store.add_health("v", start, HealthCounts(evaluations=1, errors=1))
    assert store.health(["v"], since=100.0, until=110.0)["v"].evaluations == 3
    assert store.health(["v"], since=100.0, until=109.0)["v"].evaluations == 2
    assert store.health(["v"], since=100.0)["v"].evaluations == 4
    assert store.health(["v"], until=105.0)["v"].evaluations == 2
    assert store.health(["v"])["v"].evaluations == 4
    store.close()


def test_buckets_from_a_clock_a_day_ahead_never_count_as_recent() -> None:
    """The D7 reproduction: 100,000 good evaluations a day ahead cannot hide 1,000 failures of 1,000 now."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable(auto_rollback=False)
        candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((10, 50, 100), 60))
        manager.activate_deployment(candidate)
        clock.move_to(START)
        clock.tick(DAY)
        manager.update_health_metrics(candidate, 100_000, 0)
        manager.update_health_metrics(stable, 100_000, 0)
        clock.tick(-DAY)
        clock.tick(61)
        assert manager.update_health_metrics(candidate, 1000, 1000) is False
        verdict = manager.health_verdict(candidate)
        assert verdict.healthy is False
        assert "over 1,000 evaluations" in verdict.reason
        info = manager.get_deployment_info(candidate)
        assert info is not None
        assert info.health_metrics.window.evaluations == 1000
        assert manager.tick().actions == ()  # held by the report that found it; never advanced
        status = manager.get_rollout_status()
        assert status is not None
        assert status.percentage == 10
        assert manager.state.rollout is not None
        assert manager.state.rollout.held == verdict.reason


def _advances(manager: DeploymentManager) -> list[float]:
    return [e.at for e in manager.audit_log() if e.action == "advance"]


def test_clock_jumps_during_a_canary_never_advance_a_stage_twice() -> None:
    """Forward a day, back a day, forward again: each stage is advanced once, and only on present data."""
    with freeze_time(START) as clock:
        manager, _stable = manager_with_stable()
        candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((10, 25, 50, 75, 100), 60))
        manager.activate_deployment(candidate)
        engine = RuleEngine(manager)
        drive(engine, 4000, prefix="now-")
        clock.tick(61)
        assert manager.tick().actions == (f"advanced {candidate}",)  # 10 -> 25
        present = manager.get_deployment_info(candidate)
        assert present is not None
        clock.tick(DAY)  # the stage is long due, but the window holds no data now: no verdict, hold
        assert manager.tick().actions == ()
        assert manager.health_verdict(candidate).healthy is None
        drive(engine, 4000, prefix="ahead-")  # counted a day ahead
        assert manager.tick().actions == (f"advanced {candidate}",)  # 25 -> 50, once
        assert manager.tick().actions == ()
        clock.tick(-DAY)  # back: the day-ahead buckets are in the future and do not count
        clock.tick(5)
        verdict = manager.health_verdict(candidate)
        info = manager.get_deployment_info(candidate)
        assert info is not None
        window_evaluations = info.health_metrics.window.evaluations
        for _ in range(3):
            clock.tick(61)
            assert manager.tick().actions == ()  # the stage started "a day from now": not due again
        status = manager.get_rollout_status()
        assert status is not None
        assert status.percentage == 50
        assert len(_advances(manager)) == 2
        assert verdict.healthy is True  # judged on the present window's own traffic only
        assert window_evaluations == present.health_metrics.window.evaluations > 200


def test_clock_jumps_during_an_ab_test_end_it_once_and_report_no_future_buckets() -> None:
    """An A/B test ended by a jump ahead is not ended again; its report never counts buckets ahead of now."""
    with freeze_time(START) as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS)
        a = manager.prepare_deployment(bundle("1.0.0"))
        manager.activate_deployment(a)
        b = manager.prepare_deployment(bundle("2.0.0"), ABTest(0.5, 600))
        manager.activate_deployment(b)
        engine = RuleEngine(manager)
        drive(engine, 1000, prefix="now-")
        present = manager.get_experiment_report()
        clock.tick(DAY)
        assert manager.tick().actions == ("ended A/B test",)
        drive(engine, 1000, prefix="ahead-")
        assert manager.get_experiment_report().a.evaluations + manager.get_experiment_report().b.evaluations == 2000
        clock.tick(-DAY)
        clock.tick(1)
        assert manager.tick().actions == ()
        report = manager.get_experiment_report()
        assert (report.a.evaluations, report.b.evaluations) == (present.a.evaluations, present.b.evaluations)
        assert [e.action for e in manager.audit_log()].count("end-experiment") == 1


def test_a_clock_that_jumped_back_still_prunes() -> None:
    """Pruning is once a window going forward; after a jump back it runs at once instead of waiting a day."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable(thresholds=THRESHOLDS)
        clock.tick(DAY)
        manager.tick()  # prunes, at a day ahead
        clock.tick(-DAY)
        manager.update_health_metrics(stable, 10)
        clock.tick(3 * THRESHOLDS.window_secs)
        manager.tick()  # the old bucket is two windows old: pruned
        since = manager.store.health([stable], since=0.0)[stable]
        assert since.evaluations == 0
        assert manager.store.health([stable])[stable].evaluations == 10  # lifetime kept


def test_a_version_activated_by_a_clock_a_day_ahead_does_not_bake_for_a_day() -> None:
    """Activated while the clock ran a day ahead: once it is back, the version is past its bake time."""
    with freeze_time(START) as clock:
        manager, stable = manager_with_stable()
        clock.tick(DAY)
        new = manager.prepare_deployment(bundle("2.0.0"))
        manager.activate_deployment(new)
        clock.tick(-DAY)
        clock.tick(60)
        assert manager.update_health_metrics(new, 1000, 500) is False
        assert manager.get_active_version_id() == new  # reported, not rolled back
        assert manager.tick().actions == ()
        assert stable in manager.state.versions
