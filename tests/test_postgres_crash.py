"""Crash consistency on PostgreSQL: workers SIGKILLed mid-operation, and the server crashed under them,
never cost an operation a worker reported as done (the crash test of test_crash_consistency.py, on PostgreSQL)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _support_postgres import PgCluster
from _support_processes import spawn
from test_crash_consistency import _alive, _promises
from test_postgres_store import _url

pytestmark = pytest.mark.slow

SOAK = os.environ.get("RULE_ENGINE_SOAK") == "1"
KILLS = 200 if SOAK else 16
WAIT = 30.0


def _verify(conninfo: str, side_files: list[Path]) -> int:
    """Every promise of every worker is in the database (read in one snapshot); return their count."""
    import psycopg

    promised = [_promises(side_file) for side_file in side_files]
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        (revision,) = conn.execute("SELECT revision FROM meta").fetchone() or (0,)
        row = conn.execute("SELECT doc::text FROM state").fetchone()
        retained = {v["version_id"] for v in json.loads(row[0])["versions"]} if row else set()
        assert retained <= {v for (v,) in conn.execute("SELECT version_id FROM bundles")}
        audit = set(conn.execute("SELECT action, version_id, revision FROM audit").fetchall())
        lifetime = dict(conn.execute("SELECT version_id, evaluations FROM health_lifetime").fetchall())
    audit_revisions = {r for _, _, r in audit}
    checked = 0
    health: dict[str, int] = {}
    for promises in promised:
        most: dict[str, int] = {}
        for p in promises:
            if p["op"] == "health":
                most[str(p["version_id"])] = max(most.get(str(p["version_id"]), 0), int(str(p["total"])))
                continue
            assert isinstance(p["revision"], int)
            assert p["revision"] <= revision, p
            if p["op"] in ("prepare", "activate"):
                assert (p["op"], p["version_id"], p["revision"]) in audit, p
            elif p["op"] in ("promote", "rollback"):
                assert p["revision"] in audit_revisions, p
            checked += 1
        for version_id, total in most.items():
            health[version_id] = health.get(version_id, 0) + total
    for version_id, total in health.items():
        assert lifetime.get(version_id, 0) >= total, (version_id, lifetime.get(version_id), total)
    return checked


def test_sigkills_and_a_server_crash_lose_no_reported_operation(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """Three contending workers SIGKILLed at random points, and the server stopped with ``-m immediate``
    and restarted halfway: every operation a worker reported is in the database."""
    from rule_engine import DeploymentManager

    conninfo = pg_cluster.conninfo()
    url = _url(conninfo)  # the default 5 s timeout: a loaded CI machine may take over 1 s to connect
    DeploymentManager.open(url, follow=False).close()
    rng = random.Random(4321)
    side_files: list[Path] = []
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
        assert _alive(pid), "a worker died on its own: " + "".join(p.read_text() for p in tmp_path.glob("*.err"))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while _alive(pid):
            assert time.monotonic() < deadline
            time.sleep(0.001)

    workers = [start() for _ in range(3)]
    kills = promises = 0
    try:
        while kills < KILLS:
            index = rng.randrange(len(workers))
            time.sleep(rng.uniform(0.02, 0.25))  # real time: let the workers run into a random point
            if kills == KILLS // 2:
                pg_cluster.stop("immediate")  # the server crashes under the three workers
                time.sleep(0.3)
                pg_cluster.start()
            kill(workers[index])
            kills += 1
            promises = _verify(conninfo, side_files)
            workers[index] = start()
    finally:
        for pid in workers:
            if _alive(pid):
                kill(pid)
        _, errors = zygote.communicate(timeout=WAIT)
    assert errors == ""
    promises = _verify(conninfo, side_files)
    assert kills == KILLS
    assert promises > KILLS  # the workers did real work between kills
