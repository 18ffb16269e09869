"""Change notifications from a PostgreSQL store, for a follower: LISTEN, with polling as the safety net.

One :class:`PostgresListener` is one session connection (never pooled: ``LISTEN`` belongs to a
session, and PgBouncer's transaction pooling does not carry it), used by one follower thread::

    with store.listen() as listener:
        while running:
            try:
                revision = listener.wait_for_change(timeout=1.0)
            except StoreError:
                ...  # serve the last good snapshot, report stale, back off, call again (reconnects)
            else:
                if revision is not None:
                    ...  # load the state and publish it
            if (listener.last_round_trip_age() or 0.0) > STALE_AFTER:
                ...  # a hung server raises nothing for a while: staleness comes from this age

A listener follows one deployment (``deployment()``, the handle's current binding): a notification of
another deployment's commit is not a change; it only makes the wait end early with one ``SELECT`` of
this deployment's revision (cheap, and harmless: the revision did not move, so nothing reloads).

Notifications sent while the connection was down are lost, so after every (re)connect the revision is
read again and reported if it changed. Every call ends with a round trip (the notification itself,
or a ``SELECT`` of the revision when none came within ``timeout``), so a lost notification is caught
within one ``timeout`` and :meth:`PostgresListener.last_round_trip_age` stays current.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from rule_engine.errors import StoreError
from rule_engine.stores._pg_conninfo import PgTarget
from rule_engine.stores._pg_session import Guard, RecordingConnection, Watchdog, describe, shutdown_socket

__all__ = ["PostgresListener"]


class PostgresListener:
    """A follower's view of commits: ``wait_for_change`` returns a new revision, or None.

    Not thread-safe: one listener per follower thread. Constructing does no I/O; the first
    :meth:`wait_for_change` connects.
    """

    def __init__(
        self,
        conninfo: str,
        target: PgTarget,
        *,
        channel: str,
        deployment: Callable[[], str | None] = lambda: None,
        configure: Callable[[Any], None] | None = None,
        ride: Callable[[Any], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._deployment = deployment
        self._configure = configure  # the store's session settings (timeouts), applied at each connect
        self._ride = ride  # the store's riding(conn): its calls from this thread run on our session
        self._target = target
        self._channel = channel
        self._watchdog = Watchdog("rule-engine-pg-listen")
        self._conn: RecordingConnection | None = None
        self._revision: int | None = None
        self._current = 0
        self._last_ok: float | None = None
        self._fresh = False
        self.reconnects = 0  # connections made after the first
        self.last_via = ""  # how the last new revision came: "notify", "poll" or "connect"
        self._connections = 0
        self._closed = False

    @property
    def revision(self) -> int | None:
        """The revision last returned (None before the first)."""
        return self._revision

    @property
    def connected(self) -> bool:
        """Whether the session connection is up (as far as this side knows)."""
        return self._conn is not None and not self._conn.closed

    def riding(self) -> contextlib.AbstractContextManager[None]:
        """Inside the block, the store's calls from this thread run on this listener's session (when it
        is up; see ``PostgresStore.listen``), else as usual on the store's pool."""
        conn = self._conn
        if self._ride is None or conn is None or conn.closed or conn.broken:
            return contextlib.nullcontext()
        return self._ride(conn)

    def last_round_trip_age(self) -> float | None:
        """Seconds since the server last answered (None if it never did)."""
        return None if self._last_ok is None else time.monotonic() - self._last_ok

    def wait_for_change(self, timeout: float, *, poll: bool = True) -> int | None:
        """Wait up to ``timeout`` seconds for a commit; the new revision, or None if it did not change.

        When no notification came, the revision is read (the poll: one round trip); ``poll=False``
        skips that read, so a caller that wakes often (the mirror, to forward its local rows) polls
        only when it chooses. Raises :class:`StoreError` when the server cannot be reached or does
        not answer within ``timeout`` plus the store timeout; the connection is then dropped and the
        next call reconnects (and re-reads the revision).
        """
        if self._closed:
            raise StoreError(f"the listener on {self._target.display!r} is closed")
        guard: Guard | None = None
        try:
            if self._conn is None or self._conn.closed:
                self._connect()
                if self._fresh:
                    self._fresh = False
                    return self._report(self._current, "connect")
            conn = self._conn
            assert conn is not None
            with self._watchdog.guard(conn, timeout + self._target.timeout) as guard:
                mine = self._deployment()
                deadline = time.monotonic() + max(timeout, 0.0)
                while True:  # another deployment's notifications are skipped; bounded by the deadline
                    notes = list(conn.notifies(timeout=max(deadline - time.monotonic(), 0.0), stop_after=1))
                    if notes:
                        notes += conn.notifies(timeout=0.0)  # drain what already arrived
                    seen = [r for r in (_revision_of(n.payload, mine) for n in notes) if r is not None]
                    if seen or not notes or time.monotonic() >= deadline:
                        break
                pushed = bool(seen) and min(seen) >= 0
                if not seen and not poll:
                    return None
                revision = max(seen) if pushed else self._read_revision(conn)
            self._last_ok = time.monotonic()
            return self._report(revision, "notify" if pushed else "poll")
        except psycopg.Error as exc:
            self._drop()
            raise StoreError(f"listening for changes failed: {describe(exc, self._target, guard)}") from exc

    def _connect(self) -> None:
        guard: Guard | None = None
        conn = RecordingConnection.connect(self._conninfo, autocommit=True)
        try:
            with self._watchdog.guard(conn, self._target.timeout) as guard:
                if self._configure is not None:
                    self._configure(conn)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self._current = self._read_revision(conn)
        except psycopg.Error as exc:
            conn.close()
            raise StoreError(f"listening for changes failed: {describe(exc, self._target, guard)}") from exc
        self._conn = conn
        self._last_ok = time.monotonic()
        self.reconnects += 1 if self._connections else 0
        self._connections += 1
        self._fresh = True

    def _read_revision(self, conn: psycopg.Connection[tuple[Any, ...]]) -> int:
        """The deployment's stored revision (0 while the database has no schema, or no such deployment, yet).

        Unbound (no deployment yet): the only deployment's revision, 0 if there is none or several.
        """
        row = conn.execute("SELECT CASE WHEN to_regclass('deployments') IS NULL THEN 0 END").fetchone()
        if row is not None and row[0] == 0:
            return 0
        name = self._deployment()
        if name is None:
            row = conn.execute(
                "SELECT CASE WHEN count(*) = 1 THEN max(revision) ELSE 0 END FROM deployments"
            ).fetchone()
        else:
            row = conn.execute("SELECT revision FROM deployments WHERE name = %s", (name,)).fetchone()
        return int(row[0]) if row is not None and row[0] is not None else 0

    def _report(self, revision: int, via: str) -> int | None:
        if revision == self._revision:
            return None
        self._revision, self.last_via = revision, via
        return revision

    def abort(self) -> None:
        """Make a :meth:`wait_for_change` blocked in another thread fail now (safe from any thread).

        Shuts the session's socket down (the descriptor stays libpq's); the blocked call raises
        :class:`StoreError` and the next one reconnects. Used to stop a follower thread promptly.
        """
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error, OSError):
                shutdown_socket(conn.fileno())

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close the connection and stop the watchdog (idempotent)."""
        self._closed = True
        self._drop()
        self._watchdog.close()

    def __enter__(self) -> PostgresListener:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresListener({self._target.display!r}, revision={self._revision})"


def _revision_of(payload: str, deployment: str | None) -> int | None:
    """The revision a notification about ``deployment`` carries; None for another deployment's commit
    (ignored); -1 for a payload not ours, or while no deployment is bound (then the revision is read)."""
    try:
        data = json.loads(payload)
        revision = data["revision"] if isinstance(data, dict) else None
    except (ValueError, KeyError):
        return -1
    if deployment is None:
        return -1
    if data.get("deployment") != deployment:
        return None
    return revision if isinstance(revision, int) and not isinstance(revision, bool) and revision >= 0 else -1
