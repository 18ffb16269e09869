"""PostgresStore on a real server that is stopped, hung and restarted, and under concurrent writers.

Each test owns a private cluster (``pg_cluster``) so it can stop it (``pg_ctl stop -m immediate``:
no shutdown checkpoint, like a crash) or freeze it (SIGSTOP of the postmaster and every backend).
Every call that could block runs under a liveness guard, and every loop is bounded in count.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _support_postgres import PgCluster, run_threads
from test_store_contract import _entry, _state

from rule_engine.control.records import ControlState
from rule_engine.errors import ConflictError, StoreError
from rule_engine.serving.counts import HealthCounts

pytestmark = pytest.mark.slow

T = TypeVar("T")
TIMEOUT = 1.0  # the store timeout these tests use
LIVENESS = 30.0  # a call still blocked after this long is a hang: the test fails instead of waiting
ROOT = Path(__file__).resolve().parent.parent


def _bounded(call: Callable[[], T]) -> T:
    """``call()``, failing the test if it has not returned (or raised) within LIVENESS seconds."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except BaseException as exc:  # handed back to the test
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(LIVENESS)
    assert outcome, f"the call was still blocked after {LIVENESS:g} s"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def _store(cluster: PgCluster, **kwargs: Any) -> Any:
    from rule_engine.stores.postgres import PostgresStore

    return PostgresStore(cluster.conninfo(), timeout=TIMEOUT, **kwargs)


def _bump(store: Any, attempts: int = 200) -> int:
    """Increment ``next_seq`` with optimistic retries; the revision it committed."""
    for _ in range(attempts):
        state = store.load()
        try:
            return int(store.commit(state.revision, replace(state, next_seq=state.next_seq + 1)).revision)
        except ConflictError:
            continue
    raise AssertionError(f"no commit after {attempts} conflicts")


def test_a_stopped_server_fails_each_call_with_one_store_error_and_a_restart_heals(pg_cluster: PgCluster) -> None:
    """With the server down, every call raises one StoreError saying so; after a restart calls succeed."""
    store = _store(pg_cluster)
    state = store.commit(0, _state())
    pg_cluster.stop("immediate")
    for call in (
        store.revision,
        store.load,
        lambda: store.commit(1, state),
        lambda: store.add_health("v", 0, HealthCounts(1)),
    ):
        with pytest.raises(StoreError, match=r"PostgreSQL") as caught:
            _bounded(call)
        assert isinstance(caught.value.__cause__, Exception)
    pg_cluster.start()
    assert _bounded(store.revision) == 1
    assert _bounded(lambda: store.commit(1, state)).revision == 2
    store.close()


def test_a_hung_server_fails_calls_within_the_timeout_and_recovers_when_it_resumes(pg_cluster: PgCluster) -> None:
    """SIGSTOPped server: calls raise 'did not answer' (nothing is raised by the server); SIGCONT heals."""
    store = _store(pg_cluster)
    state = store.commit(0, _state())
    frozen = pg_cluster.hang()
    try:
        with pytest.raises(StoreError, match=r"did not answer within|no connection to PostgreSQL"):
            _bounded(store.revision)
        with pytest.raises(StoreError, match=r"did not answer within|no connection to PostgreSQL"):
            _bounded(lambda: store.commit(1, state))
    finally:
        pg_cluster.resume(frozen)
    assert _bounded(store.revision) in (1, 2)  # a commit cut off after COMMIT was sent may have applied
    store.close()


def test_nothing_that_returned_success_is_lost_in_a_crash(pg_cluster: PgCluster) -> None:
    """Fifty commits (state, bundles, audit) and health flushes, an immediate stop, a restart: all there."""
    from rule_engine.stores.postgres import PostgresStore

    store = _store(pg_cluster)
    state = ControlState()
    for i in range(50):
        state = store.commit(
            i, replace(state, next_seq=i + 2), bundles={f"v{i}": f'{{"n":{i}}}'}, audit=[_entry(f"v{i}")]
        )
        store.add_health("v0", float(i), HealthCounts(1, i % 2))
    pg_cluster.stop("immediate")
    store.close()
    pg_cluster.start()
    again = PostgresStore(pg_cluster.conninfo(), timeout=5.0)
    assert again.load() == state
    assert again.revision() == 50
    assert [again.bundle_json(f"v{i}") for i in range(50)] == [f'{{"n":{i}}}' for i in range(50)]
    assert [e.version_id for e in again.audit_log()] == [f"v{i}" for i in range(50)]
    assert again.health(["v0"]) == {"v0": HealthCounts(50, 25)}
    again.close()


def test_concurrent_optimistic_commits_from_threads_lose_nothing(pg_cluster: PgCluster) -> None:
    """Eight threads x 25 increments through load/commit/retry: the count is exactly 200, revisions 1..200."""
    store = _store(pg_cluster, pool_size=8)
    committed: list[int] = []

    def writer(_: int) -> None:
        for _ in range(25):
            committed.append(_bump(store))

    errors = run_threads(writer, 8, LIVENESS * 4)
    assert errors == []
    assert sorted(committed) == list(range(1, 201))
    assert store.load().next_seq == 201
    store.close()


_WRITER = """
import sys
from dataclasses import replace
from rule_engine.errors import ConflictError
from rule_engine.stores.postgres import PostgresStore
store = PostgresStore(sys.argv[1], timeout=10)
done = 0
for _ in range(5000):
    if done == int(sys.argv[2]):
        break
    state = store.load()
    try:
        store.commit(state.revision, replace(state, next_seq=state.next_seq + 1))
        done += 1
    except ConflictError:
        pass
store.close()
print(done)
"""


def test_concurrent_optimistic_commits_from_processes_lose_nothing(pg_cluster: PgCluster) -> None:
    """Four processes x 25 increments: the final count is exactly 100 and the revision 100."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, pg_cluster.conninfo(), "25"], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=LIVENESS * 4)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert outputs == ["25"] * 4
    store = _store(pg_cluster)
    assert store.load().next_seq == 101
    assert store.revision() == 100
    store.close()


def test_the_listener_goes_stale_on_a_crash_and_rereads_after_the_restart(pg_cluster: PgCluster) -> None:
    """The listener raises StoreError when the server dies, and after a restart reports what changed meanwhile."""
    from rule_engine.stores.postgres import PostgresStore

    store = _store(pg_cluster)
    store.commit(0, _state())
    with store.listen() as listener:
        assert _bounded(lambda: listener.wait_for_change(0.5)) == 1
        pg_cluster.stop("immediate")
        with pytest.raises(StoreError, match="listening for changes failed"):
            _bounded(lambda: listener.wait_for_change(2.0))
        assert not listener.connected
        pg_cluster.start()
        other = PostgresStore(pg_cluster.conninfo(), timeout=5.0)
        other.commit(1, _state())  # committed while the listener was away: its NOTIFY is lost to it
        other.close()
        assert _bounded(lambda: listener.wait_for_change(0.5)) == 2  # re-read on reconnect
        assert listener.reconnects == 1
    store.close()


def test_the_listener_on_a_hung_server_raises_and_its_round_trip_age_grows(pg_cluster: PgCluster) -> None:
    """A frozen server raises nothing by itself: the listener's poll is cut off and the age keeps growing."""
    store = _store(pg_cluster)
    with store.listen() as listener:
        assert _bounded(lambda: listener.wait_for_change(0.1)) == 0
        frozen = pg_cluster.hang()
        try:
            with pytest.raises(StoreError, match="did not answer within"):
                _bounded(lambda: listener.wait_for_change(0.2))
            age = listener.last_round_trip_age()
            assert age is not None
            assert age >= 0.2 + TIMEOUT
        finally:
            pg_cluster.resume(frozen)
        assert _bounded(lambda: listener.wait_for_change(0.1)) is None  # reconnected: the revision is unchanged
    store.close()


def test_a_writer_stuck_in_a_transaction_blocks_others_only_for_a_bounded_time(pg_cluster: PgCluster) -> None:
    """A session of ours holding the revision lock and going silent: other commits are cancelled cleanly
    (statement_timeout, the connection stays usable), and the server ends the silent session, after which
    commits succeed."""
    import psycopg

    frozen_writer = _store(pg_cluster)
    writer = _store(pg_cluster)
    state = writer.commit(0, _state())
    pool = frozen_writer._ensure_pool()  # a pooled session, configured as the store configures them
    held = pool.getconn()
    held.execute("BEGIN")
    held.execute("SELECT revision FROM meta FOR UPDATE")  # then its process "freezes": nothing more is sent
    with pytest.raises(StoreError, match="statement cancelled"):
        _bounded(lambda: writer.commit(1, state))
    assert _bounded(writer.revision) == 1  # the cancelled session is still usable for reads

    def committed() -> bool:
        try:
            writer.commit(1, state)
        except StoreError:
            return False
        return True

    for _ in range(20):  # the server ends the idle-in-transaction session after 2 x timeout
        if _bounded(committed):
            break
    assert writer.revision() == 2
    with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
        held.execute("SELECT 1")
    pool.putconn(held)
    frozen_writer.close()
    writer.close()
