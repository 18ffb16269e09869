"""What a follower does when another process commits (issue 12's pickup path), counted in store calls.

- A revision announced by a notification is loaded without asking the store's revision first, and
  an announcement of what is already served reads nothing.
- A prepared version is compiled when the follower learns of it, so its activation publishes
  without reading or compiling its bundle; a staged bundle that fails its checks is reported once
  and left to the activation, which refuses it as before.
- On PostgreSQL, the announced load still refuses another store (its identity is checked by the load).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rule_engine import DeploymentManager, RuleEngine
from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import StoreMark
from rule_engine.stores.memory import MemoryStore
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2
from tests.test_follower_identity import SwitchableStore, _tamper_bundle

EVENT = {"agent_id": "api_gateway", "flow_id": "login", "user": {"id": "u-1"}, "risk_score": 0.1}


class CountingStore(SwitchableStore):
    """Answers from ``inner`` and counts the reads a follower makes."""

    def __init__(self, inner: StateStore) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()

    def load(self) -> ControlState:
        self.calls["load"] += 1
        return super().load()

    def revision(self) -> int:
        self.calls["revision"] += 1
        return super().revision()

    def identity(self) -> str:
        self.calls["identity"] += 1
        return super().identity()

    def mark(self) -> StoreMark:
        self.calls["mark"] += 1
        return self.current.mark()

    def bundle_json(self, version_id: str) -> str | None:
        self.calls["bundle_json"] += 1
        return super().bundle_json(version_id)

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        self.calls["audit_log"] += 1
        return super().audit_log(version_id, limit)


def _pair() -> tuple[DeploymentManager, DeploymentManager, CountingStore]:
    shared = MemoryStore()
    writer = DeploymentManager.open(shared, follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    counting = CountingStore(shared)
    follower = DeploymentManager.open(counting, follow=False)
    counting.calls.clear()
    return writer, follower, counting


def test_an_announced_revision_is_loaded_without_asking_the_revision_first() -> None:
    writer, follower, store = _pair()
    version_id = writer.prepare_deployment(GATEWAY_V2)
    writer.activate_deployment(version_id)
    follower._follower.notified(writer._store.revision())
    assert follower.refresh() is True
    assert follower.get_active_version_id() == version_id
    assert store.calls["mark"] == 0
    assert store.calls["revision"] == 0
    assert store.calls["load"] == 1


def test_an_announcement_of_what_is_already_served_reads_nothing() -> None:
    writer, follower, store = _pair()
    served = writer._store.revision()
    for announced in (served, served - 1):
        follower._follower.notified(announced)
        assert follower.refresh() is False
    assert sum(store.calls.values()) == 0
    assert follower.refresh() is False  # without an announcement: one mark(), nothing loaded
    assert store.calls == Counter({"mark": 1})


def test_a_prepared_version_is_compiled_when_learned_so_its_activation_reads_no_bundle() -> None:
    writer, follower, store = _pair()
    version_id = writer.prepare_deployment(GATEWAY_V2)
    assert follower.refresh() is True
    assert version_id in follower._follower._publisher.compiled_versions()
    assert store.calls["bundle_json"] == 1  # read once, at the prepare
    store.calls.clear()
    writer.activate_deployment(version_id)
    assert follower.refresh() is True
    assert follower.get_active_version_id() == version_id
    assert store.calls["bundle_json"] == 0
    assert RuleEngine(follower).evaluate(EVENT).version_id == version_id


def test_the_table_compiled_at_prepare_is_the_one_the_activation_serves() -> None:
    writer, follower, _ = _pair()
    version_id = writer.prepare_deployment(GATEWAY_V2)
    follower.refresh()
    warmed = follower._follower._publisher._tables[version_id]
    writer.activate_deployment(version_id)
    follower.refresh()
    assert follower.snapshot.stable is warmed


def test_a_staged_bundle_failing_its_checks_is_reported_once_then_refused_at_activation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    writer = DeploymentManager.open(url, follow=False)
    v1 = writer.prepare_deployment(GATEWAY_V1)
    writer.activate_deployment(v1)
    follower = DeploymentManager.open(url, follow=False)
    v2 = writer.prepare_deployment(GATEWAY_V2)
    _tamper_bundle(path, v2)
    with caplog.at_level(logging.WARNING, logger="rule_engine"):
        assert follower.refresh() is True
        assert follower._follower.warm() is False  # tried once per version: not again
    failures = [r for r in caplog.records if "follower.prepare_failed" in r.getMessage()]
    assert len(failures) == 1
    assert v2 in failures[0].getMessage()
    assert follower.stale is None  # a staged version serves nobody: nothing is stale
    assert v2 not in follower._follower._publisher.compiled_versions()
    writer.activate_deployment(v2)
    assert follower.refresh() is False
    assert v2 in str(follower.stale)
    assert follower.get_active_version_id() == v1


@pytest.mark.slow
def test_an_announced_load_on_postgres_still_refuses_another_store(pg_database: str) -> None:
    import psycopg

    from tests.test_postgres_store import _url

    url = _url(pg_database)
    with DeploymentManager.open(url, follow=False) as writer:
        writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    follower = DeploymentManager.open(url, follow=False)
    try:
        served = follower.get_active_version_id()
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        with DeploymentManager.open(url, follow=False) as newcomer:  # a new store in the same database
            for bundle in (GATEWAY_V2, GATEWAY_V1, GATEWAY_V2):
                newcomer.activate_deployment(newcomer.prepare_deployment(bundle))
            newer = newcomer._store.revision()
        follower._follower.notified(newer)
        assert follower.refresh() is False
        assert "replaced or recreated" in str(follower.stale)
        assert follower.get_active_version_id() == served
    finally:
        follower.close()


@pytest.mark.slow
def test_a_pushed_pickup_and_its_heartbeat_run_on_the_listeners_session(pg_database: str) -> None:
    """The follower's thread takes no pooled connection: its load and heartbeat ride the listener's."""
    import threading
    import time

    from rule_engine.deployment.follower import PushLoop
    from tests.test_postgres_store import _url

    url = _url(pg_database)
    with DeploymentManager.open(url, follow=False) as writer:
        writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
        follower = DeploymentManager.open(url)
        try:
            loop = follower._threads[0]
            assert isinstance(loop, PushLoop)
            started = time.monotonic()
            while loop.reconnected == 0 and time.monotonic() - started < 30:  # LISTENing: commits now come by NOTIFY
                time.sleep(0.01)
            store: Any = follower.store
            taken: list[str] = []
            real = store._getconn

            def getconn(*args: Any, **kwargs: Any) -> Any:
                taken.append(threading.current_thread().name)
                return real(*args, **kwargs)

            store._getconn = getconn
            version_id = writer.prepare_deployment(GATEWAY_V2)
            writer.activate_deployment(version_id)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = writer.fleet.view().instances
                if follower.get_active_version_id() == version_id and any(r.stable == version_id for r in rows):
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the follower did not serve and report the new version in time")
            assert loop.pushed >= 1  # it came by NOTIFY (one wait may take both commits)
            assert [name for name in taken if "follower" in name] == []
        finally:
            follower.close()


@pytest.mark.slow
def test_calls_riding_a_broken_session_take_a_pooled_connection(pg_database: str) -> None:
    import psycopg

    from rule_engine.stores.postgres import PostgresStore
    from tests.test_postgres_store import _url

    with DeploymentManager.open(_url(pg_database), follow=False) as writer:
        writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    store = PostgresStore(pg_database)
    try:
        gone = psycopg.connect(pg_database, autocommit=True)
        gone.close()
        with store._ride(gone):  # type: ignore[arg-type]
            assert store.revision() >= 2
    finally:
        store.close()


def test_a_revision_announced_while_one_was_loaded_is_followed_in_the_same_pickup() -> None:
    """A deploy's prepare and activation a few ms apart: one follow_once serves the activation."""
    from tests.test_follower_races import StaleOnceStore

    store = StaleOnceStore()
    writer = DeploymentManager.open(store, follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    follower = DeploymentManager.open(store, follow=False)
    version_id = writer.prepare_deployment(GATEWAY_V2)
    prepared = store.load()
    writer.activate_deployment(version_id)
    later = [store.revision()]  # the activation's notification arrives while ...
    store.stale = prepared  # ... the pickup of the prepare's reads the prepared state
    asked: list[int] = []

    def announced() -> int | None:
        asked.append(1)
        return later.pop() if later else None

    follower._follower.watch_announcements(announced)
    follower._follower.notified(prepared.revision)
    assert follower.refresh() is True
    assert follower.get_active_version_id() == version_id
    assert len(asked) == 2  # after each publish; the second found nothing newer
    assert version_id in follower._follower._publisher.compiled_versions()


def test_announcements_are_asked_only_on_the_push_loops_own_thread() -> None:
    """A refresh() from another thread never uses the listener (it is not thread-safe)."""
    from rule_engine.deployment.follower import PushLoop

    class Listener:
        last_via = "notify"
        connected = True

        def __init__(self) -> None:
            self.waits = 0

        def wait_for_change(self, timeout: float, *, poll: bool = True) -> int | None:
            self.waits += 1
            return 99

    listener = Listener()
    manager = DeploymentManager(store=MemoryStore())
    loop = PushLoop(manager._follower, listener, lambda: None)  # type: ignore[arg-type]
    assert loop._announced() is None  # asked from this test's thread, not the loop's
    assert listener.waits == 0


@pytest.mark.slow
def test_a_push_followers_idle_pooled_connection_is_closed_and_it_keeps_following(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pickups ride the listener, so the pool drops to no connection: one per follower, not two."""
    import time

    from rule_engine.stores import _pg_calls
    from tests.test_postgres_store import _url

    monkeypatch.setattr(_pg_calls, "POOL_MAX_IDLE", 0.3)
    url = _url(pg_database)
    with DeploymentManager.open(url, follow=False) as writer:
        writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
        follower = DeploymentManager.open(url)
        try:
            pool: Any = follower.store._pool  # type: ignore[attr-defined]
            deadline = time.monotonic() + 20
            while pool.get_stats()["pool_size"] > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pool.get_stats()["pool_size"] == 0
            version_id = writer.prepare_deployment(GATEWAY_V2)
            writer.activate_deployment(version_id)
            while follower.get_active_version_id() != version_id and time.monotonic() < deadline:
                time.sleep(0.02)
            assert follower.get_active_version_id() == version_id
            assert pool.get_stats()["pool_size"] == 0  # the pickup took no pooled connection
            assert follower.store.revision() >= 4  # a read by another thread takes a pooled connection again
        finally:
            follower.close()
