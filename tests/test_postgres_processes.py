"""Several processes on one PostgreSQL store: time-driven steps happen exactly once across controllers."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from _support_processes import BUNDLES, spawn
from test_postgres_store import _url

from rule_engine import BlueGreen, Canary, DeploymentManager, Scheduled

pytestmark = pytest.mark.slow

WAIT = 60.0
CONTROLLERS = 8


def _finish(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_ticks_from_eight_controller_processes_happen_once(pg_database: str) -> None:
    """Eight controllers ticking at once: each canary stage and the scheduled activation happen once."""
    from rule_engine.stores.postgres import PostgresStore

    url = _url(pg_database)
    with DeploymentManager.open(url, follow=False) as manager:
        v1 = manager.prepare_deployment(BUNDLES[0], BlueGreen())
        manager.activate_deployment(v1)
        v2 = manager.prepare_deployment(BUNDLES[1], Canary((10, 25, 50, 100), 0.3))
        v3 = manager.prepare_deployment(BUNDLES[0], Scheduled(time.time() + 6.0))  # after the canary is done
        manager.activate_deployment(v2)
        assert manager.snapshot.revision == 5
    tickers = [spawn("ticker", url, 8.0) for _ in range(CONTROLLERS)]
    reports = [_finish(t)[-1]["actions"] for t in tickers]
    actions = sorted(a for report in reports for a in report)
    assert actions == sorted([f"advanced {v2}"] * 3 + [f"activated scheduled {v3}"])
    store = PostgresStore(pg_database)
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
