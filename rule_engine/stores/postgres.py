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

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError, StoreError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores._pg_conninfo import libpq_conninfo, parse_target
from rule_engine.stores._pg_fleet import PgFleet
from rule_engine.stores._pg_listen import PostgresListener
from rule_engine.stores._pg_rows import (
    AUDIT_COLUMNS,
    AUDIT_SELECT,
    HEALTH_SELECT,
    META_COLUMNS,
    META_SELECT,
    Meta,
    audit_rows,
    health_columns,
    health_of,
    meta_of,
    notify_payload,
    sha256,
)
from rule_engine.stores._pg_schema import (
    SCHEMA_VERSION,
    UPSERT_BUCKET,
    UPSERT_LIFETIME,
    apply_migrations,
    schema_version,
)
from rule_engine.stores._pg_session import LAST_FAILURE, Guard, RecordingConnection, Watchdog, describe
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import (
    AuditCheck,
    StoreMark,
    chain_entries,
    check_continuity,
    decode_state,
    verify_chain,
)

__all__ = ["CHANNEL", "SCHEMA_VERSION", "PostgresListener", "PostgresStore"]

CHANNEL = "rule_engine"

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")


class PostgresStore(PgFleet, StateStore):
    """State in a PostgreSQL database, shared by any number of processes and hosts.

    Constructing does no I/O: the pool connects on the first call, which also checks (and if needed
    applies) the schema migrations. With ``create`` (the default when constructing from an address)
    the first call creates the tables of a database that holds none; without it (the default of
    :meth:`from_url` and ``open_store``) such a database is "no store": reads raise
    :class:`StoreError` and only a :meth:`commit` creates it. Once this object has read a store it
    never adopts another (see :func:`~rule_engine.stores.integrity.check_continuity`).
    Thread-safe: each call takes a pooled connection.
    """

    def __init__(
        self,
        address: str = "",
        *,
        timeout: float | None = None,
        pool_size: int | None = None,
        channel: str = CHANNEL,
        create: bool = True,
    ) -> None:
        self._target = parse_target(address, timeout=timeout, pool_size=pool_size)
        self.url = self._target.display
        self.timeout = self._target.timeout
        self.channel = channel
        self._conninfo = libpq_conninfo(self._target)
        self._lock = threading.Lock()
        self._pool: ConnectionPool[RecordingConnection] | None = None
        self._schema_ok = False
        self._create = create
        self._seen: StoreMark | None = None  # the store this object uses, at the highest revision read
        self._closed = False
        self._watchdog = Watchdog("rule-engine-pg")

    @classmethod
    def from_url(cls, url: str, *, create: bool = False) -> PostgresStore:
        """``postgresql://user@host/db?timeout=5&pool_size=4`` (or ``postgres://``), or a conninfo string."""
        return cls(url, create=create)

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

    def _run(
        self,
        what: str,
        work: Callable[[Conn], T],
        *,
        write: bool = False,
        check_schema: bool = True,
        create: bool = False,
    ) -> T:
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
                        self._check_schema(conn, create=create or self._create)
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

    def _check_schema(self, conn: Conn, *, create: bool) -> None:
        found = schema_version(conn)
        if found == 0 and (not create or self._seen is not None):
            gone = "is gone: the database holds no rule_engine tables any more"
            raise StoreError(
                f"the store at {self.url!r} {gone}" if self._seen is not None
                else f"no store at {self.url!r} (the database holds no rule_engine tables); `rule-engine deploy` creates one"
            )  # fmt: skip
        if found != SCHEMA_VERSION:
            apply_migrations(conn, self.url)
        self._schema_ok = True

    def migrate(self) -> tuple[int, int]:
        """Apply the missing schema migrations; return ``(version before, version after)``.

        Idempotent and safe to run from several processes at once (an advisory lock serialises them).
        Raises :class:`StoreError` if the database holds a newer schema than this library knows.
        """
        found = self._run("migrating the schema", lambda conn: apply_migrations(conn, self.url), check_schema=False)
        self._schema_ok = True
        return found

    def schema_version(self) -> int:
        """The schema version the database holds (0 for an empty database)."""
        return self._run("reading the schema version", schema_version, check_schema=False)

    # --- the contract ---------------------------------------------------------------------------

    def _adopt(self, meta: Meta, before: StoreMark | None) -> Meta:
        """Refuse another store, or an older copy (``before``: the mark when the call started, so a
        concurrent call that read a newer revision meanwhile does not make this one look old)."""
        reason = check_continuity(before, meta.mark)
        if reason is not None:
            raise StoreError(f"{self.url!r}: {reason}")
        with self._lock:
            if self._seen is None or meta.mark.revision >= self._seen.revision:
                self._seen = meta.mark
        return meta

    def _meta(self, what: str) -> Meta:
        before = self._seen
        row = self._run(what, lambda conn: conn.execute(META_SELECT).fetchone())
        return self._adopt(meta_of(row, repr(self.url)), before)

    def load(self) -> ControlState:
        """The current state: the meta row and the document read in one statement (one snapshot)."""
        before = self._seen

        def work(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute(
                f"SELECT {', '.join('m.' + c for c in META_COLUMNS.split(', '))}, s.doc::text"
                " FROM meta m LEFT JOIN state s ON s.id = 1 WHERE m.id = 1"
            ).fetchone()

        row = self._run("loading the state", work)
        meta = self._adopt(meta_of(row[:4] if row is not None else None, repr(self.url)), before)
        assert row is not None
        revision, doc = meta.mark.revision, row[4]
        if doc is None:
            if revision:  # every commit writes the state row: without it the store is corrupt
                raise StoreError(f"the state row of {self.url!r} is missing at revision {revision}")
            return ControlState(revision=0)
        return decode_state(doc, revision, repr(self.url))

    def revision(self) -> int:
        """The current revision: one single-row ``SELECT`` (identity checked too)."""
        return self._meta("reading the revision").mark.revision

    def identity(self) -> str:
        """The store's id (``meta.store_id``), drawn in the transaction that created the tables."""
        return self._meta("reading the identity").mark.identity

    def mark(self) -> StoreMark:
        """Identity and revision, read together."""
        return self._meta("reading the revision").mark

    def verify_audit(self) -> AuditCheck:
        """Check the audit hash chain in one snapshot, streaming rows through a server-side cursor."""
        before = self._seen

        def work(conn: Conn) -> AuditCheck:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            meta = self._adopt(meta_of(conn.execute(META_SELECT).fetchone(), repr(self.url)), before)
            with conn.cursor(name="rule_engine_verify_audit") as cur:
                cur.itersize = 1000
                cur.execute(f"{AUDIT_SELECT} ORDER BY seq")
                return verify_chain(audit_rows(cur), meta.chain_from, meta.head)

        return self._run("verifying the audit log", work, write=True)

    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        """Write everything, and notify followers, in one transaction if the revision is still expected.

        The ``UPDATE`` of the revision locks the meta row first, so the audit seqs, their hashes and the
        chain's new head are computed under the same lock. The first commit to an empty database creates
        the tables (whatever ``create`` was).
        """
        committed = replace(state, revision=expected_revision + 1)
        doc = json.dumps(committed.to_dict(), separators=(",", ":"))
        rows = [
            (version_id, record.digest if (record := committed.versions.get(version_id)) else sha256(text), text)
            for version_id, text in (bundles or {}).items()
        ]
        payload = notify_payload(committed.revision, [*(bundles or {}), *evicted, *(e.version_id for e in audit)])
        before = self._seen
        where = repr(self.url)

        def work(conn: Conn) -> Meta:
            found = conn.execute(
                f"UPDATE meta SET revision = revision + 1 WHERE id = 1 AND revision = %s RETURNING {META_COLUMNS}",
                (expected_revision,),
            ).fetchone()
            if found is None:
                current = self._adopt(meta_of(conn.execute(META_SELECT).fetchone(), where), before)
                raise ConflictError(
                    f"state changed concurrently: expected revision {expected_revision}, found {current.mark.revision}"
                )
            meta = meta_of(found, where)
            reason = check_continuity(before, meta.mark)
            if reason is not None:
                raise StoreError(f"{self.url!r}: {reason}")
            conn.execute(
                "INSERT INTO state (id, doc) VALUES (1, %s::jsonb) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (doc,),
            )
            seq_row = conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
            chained, head = chain_entries(audit, int(seq_row[0]) if seq_row else 0, meta.head, committed.revision)
            entries = [(*(getattr(e, c) for c in AUDIT_COLUMNS), committed.revision, h) for e, h in chained]
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
                        f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}, revision, hash) OVERRIDING SYSTEM VALUE"
                        f" VALUES ({', '.join(['%s'] * (len(AUDIT_COLUMNS) + 2))})",
                        entries,
                    )
                    many.execute("UPDATE meta SET audit_head = %s WHERE id = 1", (head,))
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
            return meta

        meta = self._run("committing the state", work, write=True, create=True)
        self._adopt(Meta(StoreMark(meta.mark.identity, committed.revision), meta.chain_from, None), before)
        return committed

    def bundle_json(self, version_id: str) -> str | None:
        """The canonical bundle JSON of a retained version (None if unknown)."""

        def work(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute("SELECT doc FROM bundles WHERE version_id = %s", (version_id,)).fetchone()

        row = self._run("reading a bundle", work)
        if row is None:
            return None
        if not isinstance(row[0], str):
            raise StoreError(f"the stored bundle of {version_id!r} in {self.url!r} is not text")
        return row[0]

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries in the order they were written, optionally of one version, the last ``limit``."""
        sql = AUDIT_SELECT
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

        entries = []
        for decoded in audit_rows(reversed(self._run("reading the audit log", work))):
            if isinstance(decoded, BaseException):
                raise StoreError(f"an audit entry in {self.url!r} is corrupt: {decoded}") from decoded
            entries.append(decoded.entry)
        return entries

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
        bucket_rows = [(v, b, *health_columns(c)) for (v, b), c in sorted(buckets.items())]
        lifetime_rows = [(v, *health_columns(c)) for v, c in sorted(lifetime.items())]

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
        if since is None and until is None:
            sql = f"SELECT {HEALTH_SELECT} FROM health_lifetime WHERE version_id = ANY(%s)"
            params: tuple[object, ...] = (list(totals),)
        else:
            low = float("-inf") if since is None else since
            high = float("inf") if until is None else until
            sql = (
                f"SELECT {HEALTH_SELECT} FROM health"
                " WHERE version_id = ANY(%s) AND bucket_start >= %s AND bucket_start <= %s"
            )
            params = (list(totals), low, high)

        def work(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.execute(sql.encode(), params).fetchall()

        for row in self._run("reading health counters", work):
            version_id, counts = health_of(row, repr(self.url))
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
