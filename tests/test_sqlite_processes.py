"""The SQLite store shared by real processes: following, concurrent writers, restart, controllers."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from rule_engine import BlueGreen, Canary, DeploymentManager, DeploymentState, Scheduled
from rule_engine.control.records import Rollout
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_processes import BUNDLES, spawn

pytestmark = pytest.mark.slow

WAIT = 30.0  # bound on any wait for a child process


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(WAIT)
        raise AssertionError(f"worker ended early: {proc.stderr.read() if proc.stderr else ''}")
    result: dict[str, Any] = json.loads(line)
    return result


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.communicate(timeout=WAIT)  # reaps it and closes its pipes


def _finish(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_deploy_in_one_process_is_seen_by_a_follower_in_another(tmp_path: Path) -> None:
    """A follower process sees the version another process deployed, without any call of its own."""
    url = _url(tmp_path)
    DeploymentManager.open(url, follow=False).close()
    watcher = spawn("watch", url, 20)
    assert _line(watcher) == {"ready": True, "active": None}
    deployed = _finish(spawn("deploy", url, BUNDLES[0]))[0]
    seen = _line(watcher)
    assert seen["active"] == deployed["version_id"]
    _stop(watcher)


def test_a_follower_sees_every_activation_in_order(tmp_path: Path) -> None:
    """A follower process serves each of 20 activations made by another process, in commit order.

    How fast it does is measured by ``benchmarks/bench_follower.py``, not asserted here.
    """
    url = _url(tmp_path)
    with DeploymentManager.open(url, follow=False) as manager:
        watcher = spawn("watch", url, 60)
        assert _line(watcher)["ready"]
        for i in range(20):
            version_id = manager.prepare_deployment(BUNDLES[i % 2], deployed_by="test")
            manager.activate_deployment(version_id)
            assert _line(watcher)["active"] == version_id  # the watcher reports each change once it serves it
        _stop(watcher)


def test_two_concurrent_deploys_end_consistently(tmp_path: Path) -> None:
    """Two processes deploying at once: both versions prepared, the last activation serves, no lost update."""
    url = _url(tmp_path)
    DeploymentManager.open(url, follow=False).close()
    procs = [spawn("deploy", url, bundle) for bundle in BUNDLES]
    results = [_finish(p)[0] for p in procs]
    store = SQLiteStore(tmp_path / "state.db")
    state = store.load()
    assert state.revision == 4  # two prepares and two activations, none lost
    last = max(results, key=lambda r: r["revision"])
    first = min(results, key=lambda r: r["revision"])
    assert state.active == last["version_id"]
    assert state.versions[first["version_id"]].state is DeploymentState.SUPERSEDED
    assert set(state.lineage) == {r["version_id"] for r in results}
    actions = [(e.version_id, e.to_state) for e in store.audit_log()]
    for result in results:
        assert (result["version_id"], "staged") in actions
        assert (result["version_id"], "active") in actions
    store.close()


def _rollout_shape(rollout: Rollout | None) -> tuple[Any, ...] | None:
    if rollout is None:
        return None
    return (rollout.kind, rollout.candidate, rollout.stable, rollout.share_bp, rollout.stage_index)


def _replay(ops: list[dict[str, Any]]) -> DeploymentManager:
    manager = DeploymentManager()
    for op in sorted(ops, key=lambda o: o["revision"]):
        name, args = op["op"], op["args"]
        if name == "prepare":
            manager.prepare_deployment(args[0], deployed_by="proc")
        elif name == "prepare-canary":
            manager.prepare_deployment(args[0], Canary((10, 50, 100), 0.0), deployed_by="proc")
        elif name == "activate":
            manager.activate_deployment(args[0], actor="proc")
        elif name == "advance":
            assert manager.advance_rollout(actor="proc")
        elif name == "promote":
            manager.promote(actor="proc")
        elif name == "rollback":
            manager.rollback(actor="proc")
    return manager


def test_concurrent_random_operations_are_serializable_and_followers_converge(tmp_path: Path) -> None:
    """Processes operating at once: every commit belongs to one successful operation, their serial
    replay gives the stored state, health adds up, and every follower converges to it."""
    url = _url(tmp_path)
    DeploymentManager.open(url, follow=False).close()
    workers = [spawn("random-ops", url, seed, 40) for seed in (1, 2, 3)]
    outputs = [_finish(w) for w in workers]
    ops = [o for out in outputs for o in out if o["ok"]]
    committed = [o for o in ops if o["revision"] is not None]
    store = SQLiteStore(tmp_path / "state.db")
    state = store.load()
    revisions = sorted(o["revision"] for o in committed)
    assert revisions == list(range(1, state.revision + 1))  # each commit claimed once: none lost, none doubled
    assert len(committed) > 20
    replayed = _replay(committed)
    assert replayed.get_active_version_id() == state.active
    assert {v: r.state for v, r in replayed.state.versions.items()} == {v: r.state for v, r in state.versions.items()}
    assert _rollout_shape(replayed.state.rollout) == _rollout_shape(state.rollout)
    health: dict[str, int] = {}
    for o in ops:
        if o["op"] == "health" and o["result"]:
            health[o["result"]] = health.get(o["result"], 0) + 10
    assert {v: c.evaluations for v, c in store.health(list(health)).items()} == health
    followers = [spawn("converge", url, state.revision, 20) for _ in range(2)]
    for follower in followers:
        out = _finish(follower)[-1]
        assert out["revision"] == state.revision
        assert out["active"] == state.active
        assert out["candidate"] == (state.rollout.candidate if state.rollout else None)
    store.close()


def test_ticks_from_several_processes_happen_once(tmp_path: Path) -> None:
    """Three controller processes ticking at once: each canary stage and the scheduled activation happen once."""
    url = _url(tmp_path)
    with DeploymentManager.open(url, follow=False) as manager:
        v1 = manager.prepare_deployment(BUNDLES[0], BlueGreen())
        manager.activate_deployment(v1)
        v2 = manager.prepare_deployment(BUNDLES[1], Canary((10, 25, 50, 100), 0.3))
        manager.activate_deployment(v2)  # before v3 is scheduled: a schedule never overrides a newer deploy (D16)
        v3 = manager.prepare_deployment(BUNDLES[0], Scheduled(time.time() + 2.0))
        assert manager.snapshot.revision == 5
    tickers = [spawn("ticker", url, 3.5) for _ in range(3)]
    reports = [_finish(t)[-1]["actions"] for t in tickers]
    actions = sorted(a for report in reports for a in report)
    assert actions == sorted([f"advanced {v2}"] * 3 + [f"activated scheduled {v3}"])
    store = SQLiteStore(tmp_path / "state.db")
    state = store.load()
    assert state.revision == 9  # 5 + three advances + one scheduled activation
    assert state.active == v3
    controller = [(e.version_id, e.to_state) for e in store.audit_log() if e.actor == "controller"]
    assert controller == [
        (v2, "rolling_out"),  # stage 2
        (v2, "rolling_out"),  # stage 3
        (v2, "active"),
        (v1, "superseded"),
        (v3, "active"),
        (v2, "superseded"),
    ]
    store.close()


def test_restart_mid_canary_recovers_the_exact_state(tmp_path: Path) -> None:
    """Closing and reopening mid-canary gives back the active version, the stage and when it started."""
    url = _url(tmp_path)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with freeze_time(start) as clock:
        manager = DeploymentManager.open(url, follow=False)
        v1 = manager.prepare_deployment(BUNDLES[0])
        manager.activate_deployment(v1)
        v2 = manager.prepare_deployment(BUNDLES[1], Canary((10, 25, 50, 100), 60.0))
        manager.activate_deployment(v2)
        clock.tick(timedelta(seconds=61))
        assert manager.advance_rollout()
        before = manager.get_rollout_status()
        manager.close()
        clock.tick(timedelta(seconds=10))
        reopened = DeploymentManager.open(url, follow=False)
        after = reopened.get_rollout_status()
        assert before is not None
        assert after is not None
        assert reopened.get_active_version_id() == v1
        assert (after.version_id, after.percentage, after.stage) == (v2, 25.0, 2)
        assert after.stage_started_at == before.stage_started_at == start.timestamp() + 61
        assert reopened.snapshot.share_bp == 2500
        clock.tick(timedelta(seconds=49))
        assert not reopened.advance_rollout()  # 59 s into a 60 s stage: the restart did not reset the clock
        clock.tick(timedelta(seconds=2))
        assert reopened.advance_rollout()
        assert reopened.snapshot.share_bp == 5000
        reopened.close()
