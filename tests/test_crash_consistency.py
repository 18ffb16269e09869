"""Crash consistency: processes killed with SIGKILL mid-operation never cost a committed operation,
and followers keep serving (and say they are stale) while the store is unavailable."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rule_engine import DeploymentManager
from rule_engine.errors import StoreError
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_processes import BUNDLES, spawn

pytestmark = pytest.mark.slow

SOAK = os.environ.get("RULE_ENGINE_SOAK") == "1"
KILLS = 300 if SOAK else 30
WAIT = 30.0


def _promises(side_file: Path) -> list[dict[str, object]]:
    """The operations a killed worker reported as successful (a torn last line is not a promise)."""
    if not side_file.exists():
        return []
    lines = side_file.read_text().split("\n")
    return [json.loads(line) for line in lines[:-1] if line]


def _verify(db: Path, side_files: list[Path]) -> int:
    """Open the store as a fresh process would, check integrity, and check every promise; return their count.

    The promises are read first: the surviving worker keeps committing, so the store may only be ahead of them.
    """
    promised = [_promises(side_file) for side_file in side_files]
    store = SQLiteStore(db)
    try:
        assert store.integrity_check() == "ok"
        state = store.load()
    finally:
        store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")  # one snapshot: every retained version can be served again
    row = conn.execute("SELECT json FROM state").fetchone()  # none while no worker has committed yet
    assert row is not None or state.revision == 0
    retained = {v["version_id"] for v in json.loads(row[0])["versions"]} if row is not None else set()
    assert retained <= {v for (v,) in conn.execute("SELECT version_id FROM bundles")}
    conn.execute("COMMIT")
    audit = {(action, version_id, revision) for action, version_id, revision in conn.execute(
        "SELECT action, version_id, revision FROM audit"
    )}  # fmt: skip
    audit_revisions = {revision for _, _, revision in audit}
    lifetime = {
        v: json.loads(c)["evaluations"] for v, c in conn.execute("SELECT version_id, counts FROM health_lifetime")
    }
    conn.close()
    checked = 0
    health_promised: dict[str, int] = {}
    for promises in promised:
        most: dict[str, int] = {}
        for promise in promises:
            op, revision = promise["op"], promise.get("revision")
            if op == "health":
                version_id, total = str(promise["version_id"]), int(str(promise["total"]))
                most[version_id] = max(most.get(version_id, 0), total)
            else:
                assert isinstance(revision, int)
                assert revision <= state.revision, promise
                if op in ("prepare", "activate"):
                    assert (op, promise["version_id"], revision) in audit, promise
                elif op in ("promote", "rollback"):
                    assert revision in audit_revisions, promise
            checked += 1
        for version_id, total in most.items():
            health_promised[version_id] = health_promised.get(version_id, 0) + total
    for version_id, total in health_promised.items():
        assert lifetime.get(version_id, 0) >= total, (version_id, lifetime.get(version_id), total)
    return checked


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_at_random_points_loses_no_committed_operation(tmp_path: Path) -> None:
    """Workers killed with SIGKILL at random points: the store opens, passes integrity_check, and holds every
    operation a worker reported (prepares, activations, promotions, rollbacks, health counts)."""
    db = tmp_path / "state.db"
    url = f"sqlite:///{db}"
    DeploymentManager.open(url, follow=False).close()
    rng = random.Random(1234)
    side_files: list[Path] = []
    kills = 0
    promises = 0

    zygote = spawn("zygote", url, stdin=subprocess.PIPE)
    assert zygote.stdin is not None
    assert zygote.stdout is not None

    def start() -> int:
        side = tmp_path / f"side-{len(side_files)}.jsonl"
        side_files.append(side)
        zygote.stdin.write(f"{side} {rng.randrange(1 << 30)}\n")
        zygote.stdin.flush()
        line = zygote.stdout.readline()
        assert line, zygote.stderr.read() if zygote.stderr else ""
        pid: int = json.loads(line)["pid"]
        return pid

    def kill(pid: int) -> None:
        errors = "".join(p.read_text() for p in tmp_path.glob("*.err"))
        assert _alive(pid), f"a worker died on its own: {errors}"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while _alive(pid):
            assert time.monotonic() < deadline
            time.sleep(0.001)

    # three writers contend, so kills land inside lock waits and commits too
    workers = [start() for _ in range(3)]
    try:
        while kills < KILLS:
            index = rng.randrange(len(workers))
            time.sleep(rng.uniform(0.02, 0.25))  # real time: let the workers run into a random point
            kill(workers[index])
            kills += 1
            promises = _verify(db, side_files)
            workers[index] = start()
    finally:
        for pid in workers:
            if _alive(pid):
                kill(pid)
        _, errors = zygote.communicate(timeout=WAIT)
    assert errors == ""  # no worker failed other than by SIGKILL
    promises = _verify(db, side_files)
    print(f"crash consistency: {kills} SIGKILLs survived, {promises} reported operations verified")
    assert kills == KILLS
    assert promises > KILLS  # the workers did real work between kills


# --- followers while the store is unavailable -------------------------------------------------------


@pytest.fixture
def followed(tmp_path: Path) -> Iterator[tuple[DeploymentManager, DeploymentManager, Path]]:
    """A writer and a follower (polling every 10 ms) on one SQLite file, with v1 serving."""
    db = tmp_path / "state.db"
    url = f"sqlite:///{db}?timeout=0.1"
    writer = DeploymentManager.open(url, follow=False)
    writer.activate_deployment(writer.prepare_deployment(BUNDLES[0]))
    follower = DeploymentManager.open(url, poll_interval=0.01)
    _until(lambda: follower.get_active_version_id() == writer.get_active_version_id())
    yield writer, follower, db
    follower.close()
    writer.close()


def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_follower_serves_last_state_while_file_is_missing_and_recovers(
    followed: tuple[DeploymentManager, DeploymentManager, Path],
) -> None:
    """With the state file moved away, a follower keeps serving, reports stale, and recovers when it returns."""
    writer, follower, db = followed
    serving = follower.get_active_version_id()
    db.rename(db.with_suffix(".away"))
    _until(lambda: follower.stale is not None)
    assert "unavailable" in str(follower.stale)
    assert follower.get_active_version_id() == serving
    assert follower.route("user-1") is not None
    db.with_suffix(".away").rename(db)
    _until(lambda: follower.stale is None)
    v2 = writer.prepare_deployment(BUNDLES[1])
    writer.activate_deployment(v2)
    _until(lambda: follower.get_active_version_id() == v2)


def test_follower_serves_last_state_while_file_is_unreadable_and_recovers(
    followed: tuple[DeploymentManager, DeploymentManager, Path],
) -> None:
    """With the state file replaced by unreadable bytes, a follower keeps serving and reports stale;
    when the good file is restored it recovers."""
    _, follower, db = followed
    serving = follower.get_active_version_id()
    backup = db.parent / "backup"
    backup.mkdir()
    files = [db.parent / (db.name + suffix) for suffix in ("", "-wal", "-shm")]
    for path in files:
        path.rename(backup / path.name)
    db.write_bytes(b"\x00garbage, not a database" * 500)
    # while the files move the follower may first see no store at all; it ends on the garbage's reason
    _until(lambda: "not an SQLite database" in str(follower.stale))
    assert follower.get_active_version_id() == serving
    db.unlink()
    for path in files:
        (backup / path.name).rename(path)
    _until(lambda: follower.stale is None)
    assert follower.get_active_version_id() == serving


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_follower_reports_stale_when_permissions_are_removed(
    followed: tuple[DeploymentManager, DeploymentManager, Path],
) -> None:
    """With read permission removed, a follower reports stale and recovers when it is restored."""
    _, follower, db = followed
    db.chmod(0)
    _until(lambda: follower.stale is not None)
    db.chmod(0o600)
    _until(lambda: follower.stale is None)


def test_exclusive_lock_blocks_writers_with_a_clear_error_while_followers_serve(
    followed: tuple[DeploymentManager, DeploymentManager, Path],
) -> None:
    """While another process holds the write lock, an operation fails with a 'locked' StoreError and nothing
    changes; followers keep serving the last committed state (WAL readers are never blocked)."""
    writer, follower, db = followed
    serving = follower.get_active_version_id()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            writer.prepare_deployment(BUNDLES[1])
        assert follower.get_active_version_id() == serving
        assert follower.refresh() is False
        assert follower.stale is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert writer.get_deployment_history() == [serving]
    shutil.copy(db, db.with_suffix(".copy"))  # the file is a consistent database again
    assert SQLiteStore(db.with_suffix(".copy")).integrity_check() == "ok"
