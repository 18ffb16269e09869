"""The convergence gate on activations: a blue-green switch's bake time counts from the fleet serving it.

Several managers on one SQLite file, followed by hand (``refresh`` + ``fleet.beat``), the clock driven
by freezegun (the managers use the system clock).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from rule_engine import BlueGreen, DeploymentManager
from rule_engine.control.states import DeploymentState
from rule_engine.deployment.fleet import FleetPolicy
from rule_engine.observability.views import fleet_status
from tests._support_health import START, THRESHOLDS, bundle
from tests.test_fleet import beat

T0 = datetime.fromisoformat(START).replace(tzinfo=UTC).timestamp()  # freezegun reads START as UTC
WAITING = "waiting for 2 of 3 instances to serve it (its bake time counts from then)"


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as clock:
        yield clock


@pytest.fixture
def fleet(tmp_path: Path, frozen: FrozenDateTimeFactory) -> Iterator[list[DeploymentManager]]:
    """Three managers on one file serving 1.0.0 (the first deploys and ticks), the fleet converged on it."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS, auto_rollback=True)
    first.activate_deployment(first.prepare_deployment(bundle("1.0.0")))
    managers = [first] + [DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS) for _ in range(2)]
    beat(managers)
    first.tick()  # records that the fleet serves 1.0.0
    yield managers
    for manager in managers:
        manager.close()


def switch(first: DeploymentManager) -> str:
    new = first.prepare_deployment(bundle("2.0.0"), BlueGreen())
    first.activate_deployment(new)
    return new


def test_the_first_activation_records_when_the_fleet_served_it(fleet: list[DeploymentManager]) -> None:
    """An activation the whole fleet serves is recorded once (``converged_at``, audit ``converge``)."""
    first = fleet[0]
    active = first.get_active_version_id()
    assert active is not None
    record = first.state.versions[active]
    assert record.converged_at is not None
    assert record.bake_from == record.converged_at
    assert first.audit_log(active, limit=1)[0].action == "converge"
    assert first.tick().holding == ()
    assert [e.action for e in first.audit_log(active)].count("converge") == 1


def test_a_blue_green_switch_holds_its_bake_until_the_fleet_serves_it(
    fleet: list[DeploymentManager], frozen: FrozenDateTimeFactory
) -> None:
    """Status and tick say what it waits for; once the fleet serves it, the bake time starts there.

    Without the gate the version, unhealthy after ``bake_secs`` from its commit, would stay; here the
    fleet took that long to serve it, so it is still baking and is rolled back.
    """
    first = fleet[0]
    first.fleet.policy = FleetPolicy(deadline=900.0)  # the fleet may take longer than the bake time
    stable = first.get_active_version_id()
    new = switch(first)
    beat(fleet[:1])
    beat(fleet[1:], refresh=False)  # alive, but still serving 1.0.0
    report = first.tick()
    assert f"{new}: {WAITING} (" in " | ".join(report.holding)
    assert first.state.versions[new].converged_at is None
    status = fleet_status(first)
    assert status["converged"] is False
    assert status["waiting"] == "waiting for 2 of 3 instances"
    assert status["summary"].endswith("; waiting for 2 of 3 instances")
    frozen.tick(THRESHOLDS.bake_secs + 5)
    beat(fleet)  # the fleet serves it only now
    first.update_health_metrics(new, 1000, 50)  # unhealthy, judged before any tick: past bake from its commit
    assert first.get_active_version_id() == new
    report = first.tick()
    record = first.state.versions[new]
    assert record.state is DeploymentState.ROLLED_BACK  # judged in the bake time that started at convergence
    assert record.converged_at == T0 + THRESHOLDS.bake_secs + 5
    assert first.get_active_version_id() == stable
    assert any(a.startswith(f"rolled back {new}") for a in report.actions)
    converge = [e for e in first.audit_log(new) if e.action == "converge"]
    assert [e.reason for e in converge] == ["fleet of 3 instances serves it; its bake time counts from now"]


def test_a_healthy_switch_bakes_for_bake_secs_from_convergence_then_stays(
    fleet: list[DeploymentManager], frozen: FrozenDateTimeFactory
) -> None:
    """The bake lasts ``bake_secs`` on the whole fleet: unhealthy after that, it is reported, not rolled back."""
    first = fleet[0]
    new = switch(first)
    frozen.tick(30)
    beat(fleet)
    first.tick()
    assert first.state.versions[new].converged_at == T0 + 30
    frozen.tick(THRESHOLDS.bake_secs - 10)  # bake_secs + 20 after the commit, bake_secs - 10 after convergence
    first.update_health_metrics(new, 1000, 50)
    assert first.state.versions[new].state is DeploymentState.ROLLED_BACK


def test_past_the_deadline_a_switch_names_its_laggards_and_optionally_ignores_them(
    fleet: list[DeploymentManager], frozen: FrozenDateTimeFactory
) -> None:
    """One dead host cannot keep a switch waiting: named after the deadline, ignored if allowed."""
    first, alive, dead = fleet
    first.fleet.policy = FleetPolicy(deadline=120.0)
    new = switch(first)
    frozen.tick(121)
    beat([first, alive])
    (held,) = [h for h in first.tick().holding if "waiting" in h]
    assert "deadline of 120 s passed" in held
    assert f"/pid {dead.fleet.info(T0).pid} (stale: last seen 121 s ago)" in held
    assert first.state.versions[new].converged_at is None
    first.fleet.policy = FleetPolicy(deadline=120.0, ignore_laggards=True)
    assert not [h for h in first.tick().holding if "waiting" in h]
    assert first.state.versions[new].converged_at == T0 + 121
    assert "ignoring 1 past the deadline" in first.audit_log(new, limit=1)[0].reason


def test_a_fleet_that_converges_past_the_deadline_does_not_restart_the_bake(
    fleet: list[DeploymentManager], frozen: FrozenDateTimeFactory
) -> None:
    """An activation is gated up to the deadline: served later (or by processes started later), it stays settled."""
    first = fleet[0]
    first.fleet.policy = FleetPolicy(deadline=120.0)
    new = switch(first)
    frozen.tick(121)
    beat(fleet)
    assert first.tick().holding == ()
    assert first.state.versions[new].converged_at is None
    assert first.state.versions[new].bake_from == first.state.versions[new].activated_at


def test_two_controllers_record_a_switch_s_convergence_once(fleet: list[DeploymentManager]) -> None:
    """Every manager may tick: the convergence is committed once, whoever sees it first."""
    first, second, _ = fleet
    new = switch(first)
    beat(fleet)
    second.tick()
    first.tick()
    second.tick()
    assert [e.action for e in first.audit_log(new)].count("converge") == 1


def test_without_registered_instances_a_switch_bakes_from_its_commit(frozen: FrozenDateTimeFactory) -> None:
    """No process follows the store: nothing holds, nothing is recorded, the bake counts from the commit."""
    manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=True)
    manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
    new = switch(manager)
    assert manager.tick().holding == ()
    assert manager.state.versions[new].converged_at is None
    frozen.tick(THRESHOLDS.bake_secs + 1)
    manager.update_health_metrics(new, 1000, 50)
    assert manager.get_active_version_id() == new  # past its bake time: reported, not rolled back


def test_on_postgres_three_managers_gate_a_switch_and_record_it_once(pg_database: str) -> None:
    """The same on the fleet's store: the switch waits for the instances, two controllers record it once."""
    from rule_engine.stores.postgres import PostgresStore
    from rule_engine.testing import ManualClock

    clock = ManualClock(T0)  # freezegun would freeze the pool's and the watchdog's monotonic clock too
    first = DeploymentManager.open(PostgresStore(pg_database), follow=False, clock=clock, thresholds=THRESHOLDS)
    managers = [first] + [
        DeploymentManager.open(PostgresStore(pg_database), follow=False, clock=clock) for _ in range(2)
    ]
    try:
        first.activate_deployment(first.prepare_deployment(bundle("1.0.0")))
        beat(managers)
        first.tick()
        new = switch(first)
        beat(managers[:1])
        beat(managers[1:], refresh=False)
        assert any(WAITING in h for h in managers[1].tick().holding)
        beat(managers)
        clock.advance(5)
        managers[1].tick()
        first.tick()
        first.refresh()
        assert first.state.versions[new].converged_at == T0 + 5
        assert [e.action for e in first.audit_log(new)].count("converge") == 1
    finally:
        for manager in managers:
            manager.close()
