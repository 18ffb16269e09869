"""Fleet truth: every following manager registers what it serves; a canary stage counts once the fleet serves it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rule_engine import Canary, DeploymentManager, RuleEngine
from rule_engine.cli import cli
from rule_engine.control.instances import EXPIRE_AFTER, InstanceInfo, fleet_view
from rule_engine.deployment import fleet as fleet_module
from rule_engine.deployment.fleet import FleetPolicy, routing_self_check
from rule_engine.stores.base import open_store
from rule_engine.testing import ManualClock
from tests._support_health import THRESHOLDS, bundle, drive


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(time.time())  # near the real time, so CLI commands (on the system clock) see fresh rows


@pytest.fixture
def fleet(url: str, clock: ManualClock) -> Iterator[list[DeploymentManager]]:
    """Three managers on one SQLite file (the first one deploys and ticks), serving 1.0.0; followed by hand."""
    first = DeploymentManager.open(url, follow=False, clock=clock, thresholds=THRESHOLDS, auto_rollback=True)
    first.activate_deployment(first.prepare_deployment(bundle("1.0.0")))
    managers = [first] + [DeploymentManager.open(url, follow=False, clock=clock) for _ in range(2)]
    beat(managers)
    yield managers
    for manager in managers:
        manager.close()


def beat(managers: list[DeploymentManager], *, refresh: bool = True) -> None:
    for manager in managers:
        if refresh:
            manager.refresh()
        manager.fleet.beat()


def test_every_manager_registers_what_it_serves(fleet: list[DeploymentManager], url: str) -> None:
    """Each manager has one row: its pid, revision, versions and bundle digests; close() removes it."""
    first = fleet[0]
    rows = {i.instance_id: i for i in first.store.instances()}
    assert set(rows) == {m.fleet.instance_id for m in fleet}
    stable = first.get_active_version_id()
    for row in rows.values():
        assert row.serving == [stable]
        assert row.revision == first.state.revision
        assert row.digests == (first.state.versions[str(stable)].digest,)
        assert row.routing_check is None
        assert row.stale is None
    fleet[2].close()
    assert len(first.store.instances()) == 2
    view = first.fleet.view()
    assert view.converged
    assert view.summary() == f"2 of 2 instances serve revision {first.state.revision}"


def test_a_heartbeat_is_written_on_change_or_when_due_not_per_step(
    fleet: list[DeploymentManager], clock: ManualClock
) -> None:
    """The write rate is bounded: an unchanged instance writes once per heartbeat interval."""
    manager = fleet[1]
    assert manager.fleet.beat() is False  # nothing changed, not due
    clock.advance(FleetPolicy().heartbeat_interval)
    assert manager.fleet.beat() is True
    assert manager.fleet.beat() is False


def test_an_instance_that_stops_beating_goes_stale_then_is_forgotten(
    fleet: list[DeploymentManager], clock: ManualClock
) -> None:
    """Past the TTL a silent instance lags as stale with its age; past forget_after it is dropped."""
    first, _, silent = fleet
    clock.advance(EXPIRE_AFTER + 2)
    beat(fleet[:2])
    view = first.fleet.view()
    assert not view.converged
    (lag,) = view.lagging
    assert lag.instance.instance_id == silent.fleet.instance_id
    assert lag.reason == f"stale: last seen {EXPIRE_AFTER + 2:.0f} s ago"
    pid = silent.fleet.info(clock.now()).pid
    assert view.summary() == (
        f"2 of 3 instances serve revision {first.state.revision} "
        f"(1 stale: {lag.instance.host}/pid {pid}, last seen {EXPIRE_AFTER + 2:.0f} s ago); waiting for 1 of 3 instances"
    )
    assert view.to_dict()["waiting"] == "waiting for 1 of 3 instances"
    assert view.to_dict()["lagging"][0]["pid"] == silent.fleet.info(clock.now()).pid
    clock.advance(FleetPolicy().forget_after)
    beat(fleet[:2])
    first.fleet._written_at = 0.0  # the next beat also prunes (it does so every forget_after / 10)
    clock.advance(1)
    first.fleet.beat()
    assert {i.instance_id for i in first.store.instances()} == {m.fleet.instance_id for m in fleet[:2]}


def test_a_canary_stage_holds_until_the_fleet_serves_it_and_counts_from_then(
    fleet: list[DeploymentManager], clock: ManualClock
) -> None:
    """Activation and each stage wait for every instance; the stage clock starts at convergence."""
    first = fleet[0]
    candidate = first.prepare_deployment(bundle("2.0.0"), Canary((10, 50, 100), 60))
    first.activate_deployment(candidate)
    engine = RuleEngine(first)
    drive(engine, 4000)
    clock.advance(61)
    beat(fleet[:1])
    beat(fleet[1:], refresh=False)  # the two others are alive but still serve 1.0.0 alone
    report = first.tick()
    assert report.actions == ()
    assert any("waiting for 2 of 3 instances to serve this stage" in h for h in report.holding)
    beat(fleet)
    report = first.tick()
    rollout = first.state.rollout
    assert rollout is not None
    assert rollout.converged_stage == 0
    assert rollout.converged_at == clock.now()
    assert rollout.stage_started_at == clock.now()  # the stage lasts 60 s on the whole fleet from now
    assert report.actions == ()
    assert first.audit_log(candidate, limit=1)[0].reason == "fleet of 3 instances serves stage 1"
    clock.advance(59)
    drive(engine, 4000, prefix="b")
    beat(fleet)
    assert first.tick().actions == ()
    clock.advance(2)
    beat(fleet)
    assert first.tick().actions == (f"advanced {candidate}",)
    rollout = first.state.rollout
    assert rollout is not None
    assert rollout.stage_index == 1
    assert rollout.converged_stage == 0
    beat(fleet[:1])
    assert any("waiting for 2 of 3" in h for h in first.tick().holding)  # the new stage waits anew


def test_past_the_deadline_the_laggards_are_named_and_optionally_ignored(
    fleet: list[DeploymentManager], clock: ManualClock
) -> None:
    """One dead host cannot freeze a rollout: after the deadline it is reported, then ignored if allowed."""
    first, alive, dead = fleet
    first.fleet.policy = FleetPolicy(deadline=120.0)
    candidate = first.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60))
    first.activate_deployment(candidate)
    drive(RuleEngine(first), 4000)
    clock.advance(121)
    beat([first, alive])
    report = first.tick()
    (held,) = [h for h in report.holding if "waiting" in h]
    assert "deadline of 120 s passed" in held
    assert f"/pid {dead.fleet.info(clock.now()).pid} (stale: last seen 121 s ago)" in held
    first.fleet.policy = FleetPolicy(deadline=120.0, ignore_laggards=True)
    first.tick()
    rollout = first.state.rollout
    assert rollout is not None
    assert rollout.converged_stage == 0
    assert "ignoring 1 past the deadline" in first.audit_log(candidate, limit=1)[0].reason


def test_without_registered_instances_the_gate_neither_holds_nor_moves_the_clock(clock: ManualClock) -> None:
    """A manager nobody follows (no fleet rows) rolls out exactly as before."""
    manager = DeploymentManager(clock=clock, thresholds=THRESHOLDS, auto_rollback=True)
    manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
    candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60))
    manager.activate_deployment(candidate)
    drive(RuleEngine(manager), 4000)
    clock.advance(61)
    assert manager.tick().actions == (f"advanced {candidate}",)


def test_the_routing_self_check_passes_here_and_catches_a_different_bucketing() -> None:
    """The golden vectors hold in this process; a vector this process disagrees with is reported."""
    assert routing_self_check() is None
    assert routing_self_check((("user-1", "gateway-access@1.0.0+0123abcd.1", 4171401059, 579),)) == (
        "bucket of 'user-1' under salt 'gateway-access@1.0.0+0123abcd.1' (v1) is 578, expected 579"
    )
    assert "murmur3 of 'user-1' (v1)" in str(routing_self_check((("user-1", "", 1, 0),)))
    wrong_v2 = routing_self_check(vectors_v2=(("user-1", "", 3752057193, 8736),))
    assert wrong_v2 == "bucket of 'user-1' under salt '' (v2) is 8735, expected 8736"
    assert "murmur3 of 'bob' (v2)" in str(routing_self_check(vectors_v2=(("bob", "rollout-\u03b1", 1, 0),)))


def test_an_instance_failing_the_routing_check_holds_a_rollout(fleet: list[DeploymentManager]) -> None:
    """A process that would bucket differently does not join a rollout silently: the fleet lags on it."""
    first = fleet[0]
    candidate = first.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60))
    first.activate_deployment(candidate)
    beat(fleet)
    good = first.store.instances()[0]
    bad = InstanceInfo(**{**good.to_dict(), "instance_id": "odd", "digests": good.digests, "routing_check": "x"})
    view = fleet_view([*first.store.instances(), bad], first.state, good.last_seen)
    (lag,) = view.lagging
    assert lag.instance.instance_id == "odd"
    assert lag.reason == "refuses the rollout: routing self-check failed (x)"


def test_an_instance_of_an_older_routing_algorithm_holds_a_rollout_that_uses_a_newer_one(
    fleet: list[DeploymentManager],
) -> None:
    """A process whose library knows only routing v1 would split a v2 rollout differently: it lags, named."""
    first = fleet[0]
    candidate = first.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60))
    first.activate_deployment(candidate)
    beat(fleet)
    rollout = first.state.rollout
    assert rollout is not None
    assert rollout.algorithm == 2  # new rollouts route by v2
    good = first.store.instances()[0]
    old = InstanceInfo(**{**good.to_dict(), "instance_id": "old", "digests": good.digests, "routing_algorithm": 1})
    view = fleet_view([*first.store.instances(), old], first.state, good.last_seen)
    (lag,) = view.lagging
    assert lag.instance.instance_id == "old"
    assert lag.reason == "cannot route the rollout: it knows routing up to v1, the rollout uses v2"
    first.rollback()
    calm = fleet_view([*first.store.instances(), old], first.state, good.last_seen)  # no rollout: it serves fine
    assert all("routing" not in lag.reason for lag in calm.lagging)


def test_instance_rows_round_trip_on_every_store(url: str, clock: ManualClock) -> None:
    """register/heartbeat/instances/forget work on memory and SQLite stores alike."""
    for store in (open_store("memory://"), open_store(url, create=True)):
        info = InstanceInfo("i1", "h", 1, 1.0, "0.1", 1, None, 3, "a", "b", 10.0, ("d1", "d2"), 5.0)
        store.register_instance(info)
        store.heartbeat(InstanceInfo(**{**info.to_dict(), "digests": info.digests, "last_seen": 9.0}))
        assert [i.last_seen for i in store.instances()] == [9.0]
        assert store.instances()[0] == InstanceInfo(**{**info.to_dict(), "digests": info.digests, "last_seen": 9.0})
        assert store.forget_instances(8.0) == 0
        store.forget_instance("i1")
        assert store.instances() == []
        store.close()


def test_fleet_and_status_commands_show_the_fleet(fleet: list[DeploymentManager], url: str) -> None:
    """`rule-engine fleet --json` lists every instance; `status` prints the summary and `--json` has `fleet`."""
    runner = CliRunner()
    shown = runner.invoke(cli, ["--store", url, "fleet", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert {i["instance_id"] for i in data["instances"]} == {m.fleet.instance_id for m in fleet}
    row = data["instances"][0]
    assert set(row) >= {"instance_id", "host", "pid", "revision", "serving", "stale", "last_seen"}
    assert row["stale"] is None
    assert row["serving"] == [fleet[0].get_active_version_id()]
    revision = fleet[0].state.revision
    status = runner.invoke(cli, ["--store", url, "status", "--json"])
    assert json.loads(status.output)["fleet"] == {
        "instances": 3,
        "converged": True,
        "serving_revision": revision,
        "lagging": [],
        "waiting": None,
        "summary": f"3 of 3 instances serve revision {revision}",
    }
    text = runner.invoke(cli, ["--store", url, "status"]).output
    assert f"fleet:   3 of 3 instances serve revision {revision}" in text
    human = runner.invoke(cli, ["--store", url, "fleet"]).output
    assert f"/pid {row['pid']}  revision {revision}" in human


def test_instance_rows_round_trip_on_postgres(pg_database: str) -> None:
    """The PostgreSQL store keeps fleet rows as the others do (upsert, list, forget)."""
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(pg_database)
    try:
        assert store.instances() == []
        info = InstanceInfo("i1", "h", 1, 1.0, "0.1", 1, None, 3, "a", None, 0.0, ("d1",), 5.0)
        store.register_instance(info)
        store.heartbeat(InstanceInfo(**{**info.to_dict(), "digests": info.digests, "last_seen": 9.0}))
        assert [i.last_seen for i in store.instances()] == [9.0]
        assert store.forget_instances(10.0) == 1
        assert store.instances() == []
    finally:
        store.close()


def test_a_process_failing_the_routing_check_refuses_the_candidate_and_holds_the_rollout(
    url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It serves all traffic on stable, says why in its row, and the canary waits for it."""
    first = DeploymentManager.open(url, follow=False, clock=clock, thresholds=THRESHOLDS, auto_rollback=True)
    first.activate_deployment(first.prepare_deployment(bundle("1.0.0")))
    monkeypatch.setattr(fleet_module, "routing_self_check", lambda: "bucket of 'user-1' is 1, expected 578")
    odd = DeploymentManager.open(url, follow=False, clock=clock)
    try:
        candidate = first.prepare_deployment(bundle("2.0.0"), Canary((50, 100), 60))
        first.activate_deployment(candidate)
        beat([first, odd])
        assert odd.state.rollout is not None  # it knows of the rollout ...
        assert odd.snapshot.candidate is None  # ... and refuses to serve the candidate
        assert all(odd.route(f"user-{i}") is odd.get_active_table() for i in range(50))
        (row,) = [i for i in first.store.instances() if i.instance_id == odd.fleet.instance_id]
        assert row.routing_check == "bucket of 'user-1' is 1, expected 578"
        drive(RuleEngine(first), 4000)
        clock.advance(61)
        beat([first, odd])
        report = first.tick()
        assert report.actions == ()
        (held,) = [h for h in report.holding if "waiting" in h]
        assert "refuses the rollout: routing self-check failed (bucket of 'user-1' is 1, expected 578)" in held
        shown = first.fleet.view().summary()
        assert "1 lagging:" in shown
        assert "refuses the rollout" in shown
    finally:
        odd.close()
        first.close()


def test_a_heartbeat_does_not_wait_for_another_process_write_lock(tmp_path: Path) -> None:
    """A heartbeat on a locked SQLite file fails at once (retried at the next step) instead of sleeping in the busy handler."""
    import sqlite3
    import threading

    from rule_engine.errors import StoreError
    from rule_engine.stores.sqlite import SQLiteStore

    path = tmp_path / "state.db"
    store = SQLiteStore(path, timeout=60.0)
    info = InstanceInfo("i1", "h", 1, 1.0, "0.1", 1, None, 0, None, None, 0.0, (), 5.0)
    store.register_instance(info)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    outcome: list[BaseException | None] = []

    def beat() -> None:
        try:
            store.heartbeat(info)
            outcome.append(None)
        except StoreError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    thread.join(20.0)  # generous: waiting would take the store's 60 s timeout
    lock_still_held = other.in_transaction
    other.execute("ROLLBACK")
    other.close()
    thread.join(70.0)
    assert lock_still_held
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreError)
    assert "locked" in str(outcome[0])
    store.heartbeat(info)  # and the next one succeeds, with the busy timeout restored for other writes
    assert store.instances() == [info]
    store.close()


def test_a_pickup_reads_the_store_once_per_need(fleet: list[DeploymentManager]) -> None:
    """Picking up a commit: one mark(), one load(), the new bundle once, no second revision read."""
    first, follower = fleet[0], fleet[1]
    first.activate_deployment(first.prepare_deployment(bundle("2.0.0")))
    store = follower.store
    calls: list[str] = []
    for name in ("mark", "revision", "load", "bundle_json", "identity"):
        real = getattr(store, name)

        def counted(*args: object, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        setattr(store, name, counted)
    assert follower.refresh()
    assert sorted(calls) == ["bundle_json", "load", "mark"]
    calls.clear()
    assert not follower.refresh()  # nothing moved: one mark(), nothing else
    assert calls == ["mark"]


def test_the_self_checks_vectors_are_the_golden_files_own() -> None:
    """The copies the self-check carries are entries of the never-edited golden files, for both algorithms."""
    from rule_engine.deployment import fleet as fleet_module

    cases = Path(__file__).parent / "cases"
    v1 = json.loads((cases / "routing_v1.json").read_text(encoding="utf-8"))
    v2 = json.loads((cases / "routing_v2.json").read_text(encoding="utf-8"))
    rows_v1 = {(v["key"], v["salt"], v["request_hash"], v["bucket"]) for v in v1["vectors"]}
    assert set(fleet_module._GOLDEN) <= rows_v1
    rows_v2 = {(v["key"], v["salt"], v["hash"], v["bucket"]) for v in v2["vectors"]}
    assert set(fleet_module._GOLDEN_V2) <= rows_v2
    assert len(fleet_module._GOLDEN_V2) >= 6
