"""How every call of the PostgreSQL store runs (a mixin of :class:`~rule_engine.stores.postgres.PostgresStore`).

A call takes a pooled connection (``psycopg_pool``, autocommit, bounded server-side by
``statement_timeout`` and ``idle_in_transaction_session_timeout``), runs under the store's watchdog
(a hung server is cut off; :mod:`rule_engine.stores._pg_session`), in one transaction when it writes
(in libpq's pipeline mode when asked: the commit), and is retried on a fresh connection when the one
it took was found broken before anything was committed. A thread riding a listener's session
(``PostgresStore.listen``) runs its calls on that connection instead, and on the pool once it broke.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from rule_engine.errors import StoreError
from rule_engine.stores._pg_conninfo import PgTarget
from rule_engine.stores._pg_session import LAST_FAILURE, Guard, RecordingConnection, Watchdog, describe

__all__ = ["POOL_MAX_IDLE", "PgCalls"]

POOL_MAX_IDLE = 60.0  # a pooled connection unused this long is closed (the pool keeps none idle)

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")


class PgCalls:
    """The pool, the watchdog, the retries and the riding of a listener's session, for every call."""

    if TYPE_CHECKING:
        url: str
        timeout: float
        _lock: threading.Lock
        _closed: bool
        _conninfo: str
        _target: PgTarget
        _pool: ConnectionPool[RecordingConnection] | None
        _schema_ok: bool
        _create: bool
        _watchdog: Watchdog
        _riding: threading.local

        def _check_schema(self, conn: Conn, *, create: bool) -> None: ...

    def _ensure_pool(self) -> ConnectionPool[RecordingConnection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the PostgreSQL store {self.url!r} is closed")
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    connection_class=RecordingConnection,
                    kwargs={"autocommit": True},
                    min_size=0,  # none kept idle: a push follower's pickups ride its listener's session
                    max_idle=POOL_MAX_IDLE,
                    max_size=self._target.pool_size,
                    configure=self._configure,
                    name="rule-engine",
                    timeout=self.timeout,
                    reconnect_timeout=self.timeout,
                    num_workers=1,
                    open=True,
                )
            return self._pool

    def _configure(self, conn: RecordingConnection) -> None:
        """Server-side bounds for every pooled session.

        ``statement_timeout`` (80% of ``timeout``) cancels a statement that waits too long (a lock held
        by another session, a slow query) before the watchdog would cut the connection, so the
        connection stays usable. ``idle_in_transaction_session_timeout`` (twice ``timeout``) makes the
        server end a session of ours that stalls inside a transaction (its process frozen), so the
        ``meta`` row lock it holds cannot block the fleet's writers for longer.
        """
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{max(1, int(self.timeout * 800))}ms", f"{max(1, int(self.timeout * 2000))}ms"),
        )

    def _getconn(self, pool: ConnectionPool[RecordingConnection], what: str, remaining: float) -> RecordingConnection:
        asked = time.monotonic()
        try:
            return pool.getconn(timeout=max(remaining, 0.001))
        except PoolTimeout as exc:
            when, cause = LAST_FAILURE.get(self._conninfo, (0.0, ""))
            recent = when >= asked - self.timeout
            detail = f": {cause}" if cause and recent else " (no server answered in time)"
            message = f"{what} failed: no connection to PostgreSQL at {self.url!r} within {self.timeout:g} s{detail}"
            raise StoreError(self._target.scrub(message)) from exc
        except PoolClosed as exc:
            raise StoreError(f"the PostgreSQL store {self.url!r} is closed") from exc

    def _run(
        self,
        what: str,
        work: Callable[[Conn], T],
        *,
        write: bool = False,
        check_schema: bool = True,
        create: bool = False,
        pipeline: bool = False,
    ) -> T:
        """Run ``work`` on a pooled connection (in one transaction if ``write``), bounded by the timeout.

        With ``pipeline`` (a write), the transaction runs in libpq's pipeline mode: ``BEGIN`` and the
        statements are queued and sent together, a ``fetch`` waits for what was sent so far, and the
        statements after the last fetch go with the ``COMMIT`` in one round trip.

        A connection found broken before anything was committed (the server restarted since it was
        pooled) is replaced and the work retried, within the same deadline. A thread riding a
        listener's session (:meth:`listen`) runs on that connection first, and on the pool after it
        broke.
        """
        pool = self._ensure_pool()
        deadline = time.monotonic() + self.timeout
        attempts = self._target.pool_size + 1
        riding: RecordingConnection | None = getattr(self._riding, "conn", None)
        for attempt in range(attempts):
            if riding is not None and not riding.closed and not riding.broken:
                conn, pooled = riding, False
            else:
                conn, pooled = self._getconn(pool, what, deadline - time.monotonic()), True
            riding = None  # a retry takes a pooled connection
            guard: Guard | None = None
            committing = False
            try:
                with self._watchdog.guard(conn, deadline - time.monotonic()) as guard:
                    if check_schema and not self._schema_ok:
                        self._check_schema(conn, create=create or self._create)
                    if not write:
                        return work(conn)
                    with conn.pipeline() if pipeline else contextlib.nullcontext(), conn.transaction():
                        result = work(conn)
                        committing = True
                    return result
            except psycopg.Error as exc:
                retry = not committing and not (guard and guard.fired) and conn.broken
                if retry and attempt + 1 < attempts and time.monotonic() < deadline:
                    continue
                unknown = (
                    " (the commit may or may not have been applied; reload to see)"
                    if committing and conn.broken
                    else ""
                )
                raise StoreError(f"{what} failed: {describe(exc, self._target, guard)}{unknown}") from exc
            finally:
                if pooled:
                    pool.putconn(conn)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    @contextlib.contextmanager
    def _ride(self, conn: RecordingConnection) -> Iterator[None]:
        """Run this thread's calls on ``conn`` (a listener's session) inside the block."""
        self._riding.conn = conn
        try:
            yield
        finally:
            self._riding.conn = None
