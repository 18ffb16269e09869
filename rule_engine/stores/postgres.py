"""The PostgreSQL store: deployment state shared by every process of a fleet, on many hosts.

Install with ``pip install 'rule_engine[postgres]'`` (psycopg 3 and psycopg-pool). Addresses:
``postgresql://user@host:5432/dbname?sslmode=require``, ``postgres://...``,
``postgresql:///dbname?host=/run/postgresql`` (unix socket) or a libpq conninfo string
(``host=/run/postgresql dbname=rules``); anything left out comes from the ``PG*`` environment
variables and ``~/.pgpass``, as with ``psql``. Two options of ours may be added to a URL: ``timeout``
(seconds, default 5) and ``pool_size`` (default 4). Layout: see :mod:`rule_engine.stores._pg_schema`.

- :meth:`PostgresStore.commit` is one transaction: ``UPDATE meta SET revision = revision + 1 WHERE
  revision = expected`` (no row: :class:`ConflictError`, nothing written), the state document, new
  bundles, evictions, audit rows and a ``NOTIFY rule_engine`` whose payload is
  ``{"revision": R, "ids": [version ids touched]}`` (delivered by the server only if it commits).
- Health deltas are upserts that add columns in SQL; nothing is read back and rewritten.
- The audit table refuses ``UPDATE``, ``DELETE`` and ``TRUNCATE`` by trigger, and a role set up as in
  ``docs/fleet.md`` has only ``INSERT, SELECT`` on it.
- Every call is bounded by ``timeout``: connecting (``connect_timeout``), waiting for a pooled
  connection, ``statement_timeout`` on the server, and a client-side watchdog for a server that
  answers nothing (:mod:`rule_engine.stores._pg_session`). One deadline covers the whole call (a
  stale pooled connection replaced and retried included), so a call raises :class:`StoreError`
  within about ``timeout`` seconds.
- Every psycopg error surfaces as :class:`StoreError` raised from it; no message, ``repr`` or ``url``
  holds the password.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError, StoreError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores._pg_conninfo import parse_target
from rule_engine.stores._pg_fleet import PgFleet
from rule_engine.stores._pg_listen import PostgresListener
from rule_engine.stores._pg_schema import (
    ADVISORY_LOCK,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    SCHEMA_VERSION,
    UPSERT_BUCKET,
    UPSERT_LIFETIME,
)
from rule_engine.stores._pg_session import LAST_FAILURE, Guard, RecordingConnection, Watchdog, describe
from rule_engine.stores.base import StateStore

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresListener", "PostgresStore"]

CHANNEL = "rule_engine"
MAX_NOTIFY_BYTES = 4000  # PostgreSQL's limit is 8000; the ids are a hint, the revision is what counts

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")


class PostgresStore(PgFleet, StateStore):
    """State in a PostgreSQL database, shared by any number of processes and hosts.

    Constructing does no I/O: the pool connects on the first call, which also checks (and if needed
    applies) the schema migrations. Thread-safe: each call takes a pooled connection.
    """

    def __init__(
        self, address: str = "", *, timeout: float | None = None, pool_size: int | None = None, channel: str = CHANNEL
    ) -> None:
        self._target = parse_target(address, timeout=timeout, pool_size=pool_size)
        self.url = self._target.display
        self.timeout = self._target.timeout
        self.channel = channel
        self._conninfo = self._libpq_conninfo()
        self._lock = threading.Lock()
        self._pool: ConnectionPool[RecordingConnection] | None = None
        self._schema_ok = False
        self._closed = False
        self._watchdog = Watchdog("rule-engine-pg")

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """``postgresql://user@host/db?timeout=5&pool_size=4`` (or ``postgres://``), or a conninfo string."""
        return cls(url)

    def _libpq_conninfo(self) -> str:
        try:
            given = conninfo_to_dict(self._target.conninfo)
        except psycopg.Error as exc:
            raise StoreURLError(f"invalid PostgreSQL address {self.url!r}: {self._target.scrub(str(exc))}") from exc
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(2, math.ceil(self.timeout))
        if "application_name" not in given:
            extra["application_name"] = "rule_engine"
        return make_conninfo(self._target.conninfo, **extra)

    # --- connections ----------------------------------------------------------------------------

    def _ensure_pool(self) -> ConnectionPool[RecordingConnection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"the PostgreSQL store {self.url!r} is closed")
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    connection_class=RecordingConnection,
                    kwargs={"autocommit": True},
                    min_size=1,
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

    def _run(self, what: str, work: Callable[[Conn], T], *, write: bool = False, check_schema: bool = True) -> T:
        """Run ``work`` on a pooled connection (in one transaction if ``write``), bounded by the timeout.

        A connection found broken before anything was committed (the server restarted since it was
        pooled) is replaced and the work retried, within the same deadline.
        """
        pool = self._ensure_pool()
        deadline = time.monotonic() + self.timeout
        attempts = self._target.pool_size + 1
        for attempt in range(attempts):
            conn = self._getconn(pool, what, deadline - time.monotonic())
            guard: Guard | None = None
            committing = False
            try:
                with self._watchdog.guard(conn, deadline - time.monotonic()) as guard:
                    if check_schema and not self._schema_ok:
                        self._check_schema(conn)
                    if not write:
                        return work(conn)
                    with conn.transaction():
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
                pool.putconn(conn)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # --- schema ---------------------------------------------------------------------------------

    def _check_schema(self, conn: Conn) -> None:
        found = _schema_version(conn)
        if found > SCHEMA_VERSION:
            raise StoreError(self._newer(found))
        if found < SCHEMA_VERSION:
            self._migrate(conn)
        self._schema_ok = True

    def _newer(self, found: int) -> str:
        return (
            f"the database at {self.url!r} holds rule_engine schema {found}, newer than schema {SCHEMA_VERSION} "
            "that this version of rule_engine knows; upgrade rule_engine"
        )

    def _migrate(self, conn: Conn) -> tuple[int, int]:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
                conn.execute(MIGRATIONS_TABLE)
                found = _schema_version(conn)
                if found > SCHEMA_VERSION:
                    raise StoreError(self._newer(found))
                for version, description, sql in MIGRATIONS:
                    if version > found:
                        conn.execute(sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                            (version, description),
                        )
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreError(
                f"the database at {self.url!r} needs schema {SCHEMA_VERSION} but this role may not create it "
                f"({exc}); run `rule-engine store migrate --store URL` as the schema owner"
            ) from exc
        self._schema_ok = True
        return found, SCHEMA_VERSION

    def migrate(self) -> tuple[int, int]:
        """Apply the missing schema migrations; return ``(version before, version after)``.

        Idempotent and safe to run from several processes at once (an advisory lock serialises them).
        Raises :class:`StoreError` if the database holds a newer schema than this library knows.
        """
        return self._run("migrating the schema", self._migrate, check_schema=False)

    def schema_version(self) -> int:
        """The schema version the database holds (0 for an empty database)."""
        return self._run("reading the schema version", _schema_version, check_schema=False)

    # --- the contract ---------------------------------------------------------------------------

    def load(self) -> ControlState:
        """The current state: revision and document read in one statement (one snapshot)."""

        def work(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT m.revision, s.doc::text FROM meta m LEFT JOIN state s ON s.id = 1 WHERE m.id = 1"
            ).fetchone()

        row = self._run("loading the state", work)
        if row is None:
            raise StoreError(f"the database at {self.url!r} has no meta row (was it emptied by hand?)")
        revision, doc = row
        if doc is None:
            return ControlState(revision=int(revision))
        try:
            state = ControlState.from_dict(json.loads(doc))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the state stored in {self.url!r} is unreadable: {exc}") from exc
        return replace(state, revision=int(revision))

    def revision(self) -> int:
        """The current revision: one single-row ``SELECT``."""

        def work(conn: Conn) -> int:
            row = conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()
            return int(row[0]) if row is not None else 0

        return self._run("reading the revision", work)

    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        """Write everything, and notify followers, in one transaction if the revision is still expected."""
        committed = replace(state, revision=expected_revision + 1)
        doc = json.dumps(committed.to_dict(), separators=(",", ":"))
        rows = [
            (
                version_id,
                record.digest if (record := committed.versions.get(version_id)) else _sha256(text),
                text,
            )
            for version_id, text in (bundles or {}).items()
        ]
        entries = [
            (e.at, e.action, e.version_id, e.from_state, e.to_state, e.actor, e.reason, e.strategy, committed.revision)
            for e in audit
        ]
        touched = [*(bundles or {}), *evicted, *(e.version_id for e in audit)]
        payload = _payload(committed.revision, touched)

        def work(conn: Conn) -> None:
            cur = conn.execute(
                "UPDATE meta SET revision = revision + 1 WHERE id = 1 AND revision = %s", (expected_revision,)
            )
            if cur.rowcount != 1:
                found = conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()
                raise ConflictError(
                    f"state changed concurrently: expected revision {expected_revision}, "
                    f"found {found[0] if found else None}"
                )
            conn.execute(
                "INSERT INTO state (id, doc) VALUES (1, %s::jsonb) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (doc,),
            )
            with conn.cursor() as many:
                if rows:
                    many.executemany(
                        "INSERT INTO bundles (version_id, digest, doc) VALUES (%s, %s, %s) ON CONFLICT (version_id)"
                        " DO UPDATE SET digest = excluded.digest, doc = excluded.doc",
                        rows,
                    )
                if evicted:
                    many.execute("DELETE FROM bundles WHERE version_id = ANY(%s)", (list(evicted),))
                if entries:
                    many.executemany(
                        "INSERT INTO audit (at, action, version_id, from_state, to_state, actor, reason, strategy,"
                        " revision) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                        entries,
                    )
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))

        self._run("committing the state", work, write=True)
        return committed

    def bundle_json(self, version_id: str) -> str | None:
        """The canonical bundle JSON of a retained version (None if unknown)."""

        def work(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute("SELECT doc FROM bundles WHERE version_id = %s", (version_id,)).fetchone()

        row = self._run("reading a bundle", work)
        return str(row[0]) if row is not None else None

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries in the order they were written, optionally of one version, the last ``limit``."""
        sql = "SELECT seq, at, action, version_id, from_state, to_state, actor, reason, strategy FROM audit"
        params: list[object] = []
        if version_id is not None:
            sql += " WHERE version_id = %s"
            params.append(version_id)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += " LIMIT %s"
            params.append(limit)

        def work(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.execute(sql.encode(), params).fetchall()

        rows = self._run("reading the audit log", work)
        return [
            AuditEntry(
                at=at, action=action, version_id=vid, from_state=from_state, to_state=to_state,
                actor=actor, reason=reason, strategy=strategy, seq=int(seq),
            )
            for seq, at, action, vid, from_state, to_state, actor, reason, strategy in reversed(rows)
        ]  # fmt: skip

    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        """Add ``delta`` to the bucket and to the lifetime totals (one transaction)."""
        self.add_health_many([(version_id, bucket_start, delta)])

    def add_health_many(self, deltas: Sequence[tuple[str, float, HealthCounts]]) -> None:
        """Add several deltas in one transaction, as upserts that add columns in SQL.

        Deltas for the same row are summed first, and rows are written in key order, so concurrent
        flushes from many processes never deadlock.
        """
        buckets: dict[tuple[str, float], HealthCounts] = {}
        lifetime: dict[str, HealthCounts] = {}
        for version_id, bucket_start, delta in deltas:
            key = (version_id, float(bucket_start))
            buckets[key] = buckets.get(key, HealthCounts()) + delta
            lifetime[version_id] = lifetime.get(version_id, HealthCounts()) + delta
        if not buckets:
            return
        bucket_rows = [(v, b, *_columns(c)) for (v, b), c in sorted(buckets.items())]
        lifetime_rows = [(v, *_columns(c)) for v, c in sorted(lifetime.items())]

        def work(conn: Conn) -> None:
            with conn.cursor() as many:
                many.executemany(UPSERT_BUCKET, bucket_rows)
                many.executemany(UPSERT_LIFETIME, lifetime_rows)

        self._run("adding health counters", work, write=True)

    def health(
        self, version_ids: Sequence[str], since: float | None = None, until: float | None = None
    ) -> dict[str, HealthCounts]:
        """Each version's counters over buckets starting in ``[since, until]`` (lifetime if both are None)."""
        totals = {v: HealthCounts() for v in version_ids}
        if not totals:
            return totals
        columns = "version_id, evaluations, errors, timeouts, latency_sum_us, histogram, decisions, rules"
        if since is None and until is None:
            sql = f"SELECT {columns} FROM health_lifetime WHERE version_id = ANY(%s)"
            params: tuple[object, ...] = (list(totals),)
        else:
            low = float("-inf") if since is None else since
            high = float("inf") if until is None else until
            sql = (
                f"SELECT {columns} FROM health WHERE version_id = ANY(%s) AND bucket_start >= %s AND bucket_start <= %s"
            )
            params = (list(totals), low, high)

        def work(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.execute(sql.encode(), params).fetchall()

        for version_id, evaluations, errors, timeouts, latency, histogram, decisions, rules in self._run(
            "reading health counters", work
        ):
            counts = HealthCounts(
                int(evaluations), int(errors), int(timeouts), float(latency),
                tuple(int(x) for x in histogram), {str(k): int(n) for k, n in decisions.items()},
                {str(k): int(n) for k, n in rules.items()},
            )  # fmt: skip
            totals[version_id] = totals[version_id] + counts
        return totals

    def prune_health(self, before: float) -> None:
        """Drop health buckets that start before ``before`` (lifetime totals are kept)."""

        def work(conn: Conn) -> None:
            conn.execute("DELETE FROM health WHERE bucket_start < %s", (before,))

        self._run("pruning health buckets", work, write=True)

    # --- followers ------------------------------------------------------------------------------

    def listen(self) -> PostgresListener:
        """A listener on its own session connection (not pooled) for one follower thread; see
        :class:`PostgresListener`. Close it (or use it as a context manager) when done."""
        return PostgresListener(self._conninfo, self._target, channel=self.channel)

    def close(self) -> None:
        """Close the pool and stop the watchdog (idempotent)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self.timeout)
        self._watchdog.close()

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"


def _schema_version(conn: Conn) -> int:
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(found[0]) if found is not None else 0


def _columns(c: HealthCounts) -> tuple[object, ...]:
    return (
        c.evaluations,
        c.errors,
        c.timeouts,
        c.latency_sum_us,
        list(c.histogram),
        json.dumps(dict(c.decisions), separators=(",", ":")),
        json.dumps(dict(c.rules), separators=(",", ":")),
    )


def _payload(revision: int, touched: Sequence[str]) -> str:
    ids: list[str] = []
    size = 0
    for version_id in dict.fromkeys(touched):
        size += len(version_id.encode()) + 4
        if size > MAX_NOTIFY_BYTES:
            return json.dumps({"revision": revision, "ids": ids, "truncated": True}, separators=(",", ":"))
        ids.append(version_id)
    return json.dumps({"revision": revision, "ids": ids}, separators=(",", ":"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
