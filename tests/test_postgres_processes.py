"""Several processes on one PostgreSQL store: followers see other processes' deploys; time-driven steps
happen exactly once across controllers."""

from __future__ import annotations

import time

import pytest
from _support_processes import BUNDLES, spawn
from test_postgres_store import _url
from test_sqlite_processes import _finish, _line, _stop

from rule_engine import BlueGreen, Canary, DeploymentManager, Scheduled

pytestmark = pytest.mark.slow

CONTROLLERS = 8


def test_a_deploy_in_one_process_is_seen_by_a_follower_in_another(pg_database: str) -> None:
    """A follower process on a postgresql:// store serves what another process deployed, unasked."""
    url = _url(pg_database)
    DeploymentManager.open(url, follow=False).close()
    watcher = spawn("watch", url, 20)
    try:
        assert _line(watcher) == {"ready": True, "active": None}
        deployed = _finish(spawn("deploy", url, BUNDLES[0]))[0]
        assert _line(watcher)["active"] == deployed["version_id"]
    finally:
        _stop(watcher)


def test_ticks_from_eight_controller_processes_happen_once(pg_database: str) -> None:
    """Eight controllers ticking at once: each canary stage and the scheduled activation happen once."""
    from rule_engine.stores.postgres import PostgresStore

    url = _url(pg_database)
    with DeploymentManager.open(url, follow=False) as manager:
        v1 = manager.prepare_deployment(BUNDLES[0], BlueGreen())
        manager.activate_deployment(v1)
        v2 = manager.prepare_deployment(BUNDLES[1], Canary((10, 25, 50, 100), 0.3))
        manager.activate_deployment(v2)  # before v3 is scheduled: a schedule never overrides a newer deploy (D16)
        v3 = manager.prepare_deployment(BUNDLES[0], Scheduled(time.time() + 6.0))  # after the canary is done
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
