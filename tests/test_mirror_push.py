"""The mirror follows an upstream that pushes (LISTEN/NOTIFY) by push, with polling as the safety net."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rule_engine import DeploymentManager
from rule_engine.deployment import mirror as mirror_module
from rule_engine.deployment.mirror import Mirror
from rule_engine.errors import StoreError
from rule_engine.stores.integrity import StoreMark
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_health import bundle

WAIT = 10.0  # bound on every wait for the mirror's thread


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT} s: {what}"
        time.sleep(0.01)


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mirror.db'}"


def running(copy: Mirror, interval: float) -> threading.Thread:
    thread = threading.Thread(target=copy.run, args=(interval,), daemon=True)
    thread.start()
    return thread


def counting_marks(copy: Mirror) -> list[float]:
    """Record every ``mark()`` the mirror makes upstream (what a polling mirror does every interval)."""
    calls: list[float] = []
    real = copy.upstream.mark

    def mark() -> StoreMark:
        calls.append(time.monotonic())
        return real()

    copy.upstream.mark = mark  # type: ignore[method-assign]
    return calls


def test_a_postgres_upstream_is_followed_by_notifications_not_by_polling(
    pg_database: str, local_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the safety poll 1 hour away, a deploy upstream reaches the mirror (and a process behind it) by NOTIFY."""
    from rule_engine.stores.postgres import PostgresStore

    monkeypatch.setattr(mirror_module, "PUSH_POLL", 3600.0)
    upstream = DeploymentManager.open(PostgresStore(pg_database), follow=False)
    upstream.activate_deployment(upstream.prepare_deployment(bundle("1.0.0")))
    copy = Mirror(PostgresStore(pg_database), SQLiteStore.from_url(local_url, create=True))
    marks = counting_marks(copy)
    thread = running(copy, 0.01)
    local: DeploymentManager | None = None
    try:
        eventually(lambda: copy.local.revision() == upstream.state.revision, "the first copy (on connect)")
        local = DeploymentManager.open(local_url)  # an evaluator process's manager, following the file
        new = upstream.prepare_deployment(bundle("2.0.0"))
        upstream.activate_deployment(new)
        eventually(lambda: copy.local.revision() == upstream.state.revision, "the pushed copy")
        assert local is not None
        eventually(lambda: local is not None and local.get_active_version_id() == new, "the local process serves it")
        assert copy.stale is None
        assert len(marks) <= 4  # the connect, then one per notification (prepare, activate): not every 10 ms
    finally:
        copy.stop()
        thread.join(WAIT)
        assert not thread.is_alive()  # stop() interrupts the wait for a notification
        if local is not None:
            local.close()
        upstream.close()
        copy.upstream.close()
        copy.local.close()


class FlakyListener:
    """A listener that fails ``failures`` times, then reports the store's revision once and idles."""

    def __init__(self, store: MemoryStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls: list[bool] = []  # the poll flag of each call
        self.closed = False

    def wait_for_change(self, timeout: float, *, poll: bool = True) -> int | None:
        self.calls.append(poll)
        if self.failures:
            self.failures -= 1
            raise StoreError("cannot reach PostgreSQL at db.internal: connection refused")
        time.sleep(min(timeout, 0.01))
        return self.store.revision() if len(self.calls) == 4 else None

    def last_round_trip_age(self) -> float | None:
        return 0.0

    def abort(self) -> None:
        """Nothing blocks for long here."""

    def close(self) -> None:
        self.closed = True


class PushingMemoryStore(MemoryStore):
    """A memory store whose ``listen()`` hands out one :class:`FlakyListener`."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.listener = FlakyListener(self, failures)

    def listen(self) -> FlakyListener:
        return self.listener


@pytest.fixture
def pushing() -> PushingMemoryStore:
    store = PushingMemoryStore(failures=3)
    manager = DeploymentManager(store=store)
    manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
    return store


def test_a_failing_listener_makes_the_mirror_stale_once_and_it_recovers(
    pushing: PushingMemoryStore, local_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three failures: one ``mirror.stale``, backoff, then the copy on the next change and one ``mirror.recovered``."""
    monkeypatch.setattr(mirror_module, "PUSH_POLL", 3600.0)
    copy = Mirror(pushing, SQLiteStore.from_url(local_url, create=True))
    copy.open()
    with capture_logs() as logs:
        thread = running(copy, 0.01)
        try:
            eventually(lambda: copy.local.revision() == pushing.revision(), "the copy after the failures")
            eventually(lambda: copy.stale is None, "recovered")
        finally:
            copy.stop()
            thread.join(WAIT)
    events = [e["event"] for e in logs if e["event"].startswith("mirror.")]
    assert events.count("mirror.stale") == 1
    assert events.count("mirror.recovered") == 1
    assert pushing.listener.calls[3] is True  # the first call after reconnecting polls (it is due)
    assert not any(pushing.listener.calls[4:])  # then no poll until PUSH_POLL has passed
    assert pushing.listener.closed
    copy.local.close()


def test_a_listener_told_not_to_poll_makes_no_round_trip_when_nothing_came(pg_database: str) -> None:
    """``wait_for_change(t, poll=False)``: None at once when idle (no ``SELECT``), the revision when notified."""
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(pg_database)
    manager = DeploymentManager.open(store, follow=False)
    try:
        with store.listen() as listener:
            assert listener.wait_for_change(1.0) == manager.state.revision  # the connect reads it
            age = listener.last_round_trip_age()
            assert listener.wait_for_change(0.05, poll=False) is None
            after = listener.last_round_trip_age()
            assert age is not None
            assert after is not None
            assert after > age  # no answer was asked for
            manager.prepare_deployment(bundle("1.0.0"))
            assert listener.wait_for_change(WAIT, poll=False) == manager.state.revision  # the notification
            assert listener.last_via == "notify"
    finally:
        manager.close()


class SilentListener(FlakyListener):
    """Answers nothing: no error, but the last round trip keeps getting older (a hung server)."""

    def last_round_trip_age(self) -> float | None:
        return mirror_module.STALE_AFTER + 1.0


def test_a_silent_upstream_makes_the_mirror_stale_by_the_age_of_its_last_answer(local_url: str) -> None:
    """A hung server raises nothing: the mirror still reports stale, once, from the round-trip age."""
    store = PushingMemoryStore(failures=0)
    store.listener = SilentListener(store, 0)
    manager = DeploymentManager(store=store)
    manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
    copy = Mirror(store, SQLiteStore.from_url(local_url, create=True))
    copy.open()
    with capture_logs() as logs:
        thread = running(copy, 0.01)
        try:
            eventually(lambda: copy.stale is not None, "stale")
            eventually(lambda: len(store.listener.calls) > 10, "more calls while silent")
        finally:
            copy.stop()
            thread.join(WAIT)
    assert copy.stale is not None
    assert copy.stale.startswith("the upstream has not answered for ")
    assert [e["event"] for e in logs].count("mirror.stale") == 1
    copy.local.close()
