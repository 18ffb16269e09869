"""The PostgreSQL store: deployment state shared by every process of a fleet, on many hosts.

Install with ``pip install 'rule_engine[postgres]'`` (psycopg 3 and psycopg-pool). Addresses:
``postgresql://user@host:5432/dbname?sslmode=require``, ``postgres://...``,
``postgresql:///dbname?host=/run/postgresql`` (unix socket) or a libpq conninfo string
(``host=/run/postgresql dbname=rules``); anything left out comes from the ``PG*`` environment
variables and ``~/.pgpass``, as with ``psql``. Two options of ours may be added to a URL: ``timeout``
(seconds, default 5) and ``pool_size`` (default 4). Layout: see :mod:`rule_engine.stores._pg_schema`.

- A handle works on one deployment (see :mod:`rule_engine.stores.deployments`): every row has a
  ``deployment`` column, and each deployment has its own revision and audit chain (``deployments``).
- :meth:`PostgresStore.commit` is one transaction: ``UPDATE meta SET revision = revision + 1`` (the
  store-wide commit counter: its row lock serialises commits, so the one audit seq stays ordered),
  then ``UPDATE deployments SET revision = revision + 1 WHERE name = D AND revision = expected`` (no
  row: :class:`ConflictError`, nothing written; the first commit inserts the row), the state
  document, new bundles, evictions, audit rows and a ``NOTIFY rule_engine`` whose payload is
  ``{"deployment": D, "revision": R, "ids": [version ids touched]}`` (delivered by the server only if
  it commits; a follower of another deployment ignores it).
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
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError, StoreError
from rule_engine.stores._pg_calls import PgCalls
from rule_engine.stores._pg_conninfo import libpq_conninfo, parse_target
from rule_engine.stores._pg_fleet import PgFleet
from rule_engine.stores._pg_health import PgHealth
from rule_engine.stores._pg_listen import PostgresListener
from rule_engine.stores._pg_rows import (
    AUDIT_COLUMNS,
    AUDIT_SELECT,
    BUMP_REVISION,
    FIRST_REVISION,
    META_COLUMNS,
    META_SELECT,
    STATE_UPSERT,
    Meta,
    audit_rows,
    meta_of,
    notify_payload,
    sha256,
)
from rule_engine.stores._pg_schema import (
    SCHEMA_VERSION,
    apply_migrations,
    schema_version,
)
from rule_engine.stores._pg_session import RecordingConnection, Watchdog
from rule_engine.stores.base import StateStore
from rule_engine.stores.deployments import UNBOUND, check_name, name_for, pick
from rule_engine.stores.integrity import (
    AuditCheck,
    StateDecoder,
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


class PostgresStore(PgCalls, PgHealth, PgFleet, StateStore):
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
        deployment: str | None = None,
    ) -> None:
        self.deployment = None if deployment is None else check_name(deployment)
        self._address, self._options = address, (timeout, pool_size)
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
        self._decode = StateDecoder()  # load() reuses the records of versions that did not change
        self._closed = False
        self._watchdog = Watchdog("rule-engine-pg")
        self._riding = threading.local()  # .conn: a listener's session this thread's calls run on (see listen())

    @classmethod
    def from_url(cls, url: str, *, create: bool = False, deployment: str | None = None) -> PostgresStore:
        """``postgresql://user@host/db?timeout=5&pool_size=4`` (or ``postgres://``), or a conninfo string."""
        return cls(url, create=create, deployment=deployment)

    def scoped(self, name: str) -> PostgresStore:
        """A handle on deployment ``name`` of this database (its own pool, the same ``create``; close it when done)."""
        timeout, pool_size = self._options
        return PostgresStore(
            self._address,
            timeout=timeout,
            pool_size=pool_size,
            channel=self.channel,
            create=self._create,
            deployment=name,
        )

    def _scope(self, conn: Conn, *, lenient: bool = False) -> str:
        """The deployment this call works on; binds an unbound handle to the only one (see ``deployments``)."""
        if self.deployment is not None:
            return self.deployment
        names = [str(r[0]) for r in conn.execute("SELECT name FROM deployments ORDER BY name").fetchall()]
        if lenient and len(names) > 1:
            return UNBOUND
        scope = pick(None, names, repr(self.url))
        if scope != UNBOUND:
            self.deployment = scope
        return scope

    def deployment_names(self) -> list[str]:
        """The deployments this database holds, sorted."""
        rows = self._run(
            "listing deployments", lambda c: c.execute("SELECT name FROM deployments ORDER BY name").fetchall()
        )
        return [str(r[0]) for r in rows]

    def deployment_states(self) -> dict[str, ControlState]:
        """Every deployment's state, read in one statement (one snapshot)."""
        sql = "SELECT d.name, d.revision, s.doc::text FROM deployments d LEFT JOIN state s ON s.deployment = d.name"
        rows = self._run("listing deployments", lambda c: c.execute(sql).fetchall())
        return {str(n): decode_state(doc, int(r), f"{self.url!r} (deployment {n!r})") for n, r, doc in rows}

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

    def _meta(self, what: str, *, lenient: bool = False) -> Meta:
        before = self._seen
        row = self._run(what, lambda conn: conn.execute(META_SELECT, (self._scope(conn, lenient=lenient),)).fetchone())
        return self._adopt(meta_of(row, repr(self.url)), before)

    def load(self) -> ControlState:
        """The current state: the meta row and the document read in one statement (one snapshot)."""
        before = self._seen

        def work(conn: Conn) -> tuple[Any, ...] | None:
            scope = self._scope(conn)
            return conn.execute(
                f"SELECT {META_COLUMNS}, s.doc::text FROM meta m LEFT JOIN deployments d ON d.name = %s"
                " LEFT JOIN state s ON s.deployment = %s WHERE m.id = 1",
                (scope, scope),
            ).fetchone()

        row = self._run("loading the state", work)
        meta = self._adopt(meta_of(row[:4] if row is not None else None, repr(self.url)), before)
        assert row is not None
        revision, doc = meta.mark.revision, row[4]
        if doc is None:
            if revision:  # every commit writes the state row: without it the store is corrupt
                raise StoreError(f"the state row of {self.url!r} is missing at revision {revision}")
            return ControlState(revision=0)
        if not revision:  # a committed deployment has its row in `deployments`: without it the store is corrupt
            raise StoreError(f"the deployments row of {self.deployment!r} in {self.url!r} is missing: it holds state")
        return self._decode(doc, revision, repr(self.url))

    def revision(self) -> int:
        """The current revision: one single-row ``SELECT`` (identity checked too)."""
        return self._meta("reading the revision").mark.revision

    def identity(self) -> str:
        """The store's id (``meta.store_id``), drawn in the transaction that created the tables."""
        return self._meta("reading the identity", lenient=True).mark.identity

    def mark(self) -> StoreMark:
        """Identity and revision, read together."""
        return self._meta("reading the revision").mark

    def verify_audit(self) -> AuditCheck:
        """Check the audit hash chain in one snapshot, streaming rows through a server-side cursor."""
        before = self._seen

        def work(conn: Conn) -> AuditCheck:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            scope = self._scope(conn)
            meta = self._adopt(meta_of(conn.execute(META_SELECT, (scope,)).fetchone(), repr(self.url)), before)
            with conn.cursor(name="rule_engine_verify_audit") as cur:
                cur.itersize = 1000
                cur.execute(f"{AUDIT_SELECT} ORDER BY seq", (scope,))
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
        touched = [*(bundles or {}), *evicted, *(e.version_id for e in audit)]
        before = self._seen
        where = repr(self.url)

        def work(conn: Conn) -> tuple[Meta, str]:
            conn.execute(
                "UPDATE meta SET revision = revision + 1 WHERE id = 1"
            )  # commits of all deployments queue here
            scope = self._scope(conn)
            name = scope if scope != UNBOUND else name_for(committed)
            # The last audit seq is read with the revision (under the meta row's lock): one round trip.
            found = conn.execute(BUMP_REVISION, (name, expected_revision)).fetchone()
            if found is None and expected_revision == 0:
                found = conn.execute(FIRST_REVISION, (name,)).fetchone()
            if found is None:
                current = self._adopt(meta_of(conn.execute(META_SELECT, (name,)).fetchone(), where), before)
                raise ConflictError(
                    f"state changed concurrently: expected revision {expected_revision}, found {current.mark.revision}"
                )
            meta = meta_of(found[:4], where)
            reason = check_continuity(before, meta.mark)
            if reason is not None:
                raise StoreError(f"{self.url!r}: {reason}")
            # From here on nothing is read: every statement is queued and sent with the COMMIT.
            conn.execute(STATE_UPSERT, (name, doc))
            last_seq = found[4]
            chained, head = chain_entries(
                audit, int(last_seq) if last_seq is not None else 0, meta.head, committed.revision
            )
            entries = [(*(getattr(e, c) for c in AUDIT_COLUMNS), committed.revision, h, name) for e, h in chained]
            with conn.cursor() as many:
                if rows:
                    many.executemany(
                        "INSERT INTO bundles (deployment, version_id, digest, doc) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (deployment, version_id) DO UPDATE SET digest = excluded.digest, doc = excluded.doc",
                        [(name, *row) for row in rows],
                    )
                if evicted:
                    many.execute(
                        "DELETE FROM bundles WHERE deployment = %s AND version_id = ANY(%s)", (name, list(evicted))
                    )
                if entries:
                    many.executemany(
                        f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}, revision, hash, deployment) OVERRIDING SYSTEM"
                        f" VALUE VALUES ({', '.join(['%s'] * (len(AUDIT_COLUMNS) + 3))})",
                        entries,
                    )
                    many.execute("UPDATE deployments SET audit_head = %s WHERE name = %s", (head, name))
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, notify_payload(committed.revision, touched, name)))
            return meta, name

        meta, self.deployment = self._run("committing the state", work, write=True, create=True, pipeline=True)
        self._adopt(Meta(StoreMark(meta.mark.identity, committed.revision), meta.chain_from, None), before)
        return committed

    def bundle_json(self, version_id: str) -> str | None:
        """The canonical bundle JSON of a retained version (None if unknown)."""

        def work(conn: Conn) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT doc FROM bundles WHERE deployment = %s AND version_id = %s", (self._scope(conn), version_id)
            ).fetchone()

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
            sql += " AND version_id = %s"
            params.append(version_id)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += " LIMIT %s"
            params.append(limit)

        def work(conn: Conn) -> list[tuple[Any, ...]]:
            return conn.execute(sql.encode(), [self._scope(conn), *params]).fetchall()

        entries = []
        for decoded in audit_rows(reversed(self._run("reading the audit log", work))):
            if isinstance(decoded, BaseException):
                raise StoreError(f"an audit entry in {self.url!r} is corrupt: {decoded}") from decoded
            entries.append(decoded.entry)
        return entries

    # --- followers ------------------------------------------------------------------------------

    def listen(self) -> PostgresListener:
        """A listener on its own session connection (not pooled) for one follower thread; see
        :class:`PostgresListener`. Close it (or use it as a context manager) when done.

        Inside its ``riding()`` block, this store's calls from the listener's thread run on the
        listener's session instead of a pooled connection: a follower's pickup (the state's load, its
        heartbeat) then wakes one server process, the one that just delivered the notification, and
        a follower needs no second connection. Notifications that arrive meanwhile are kept by
        psycopg and returned by the next wait.
        """
        return PostgresListener(
            self._conninfo,
            self._target,
            channel=self.channel,
            deployment=lambda: self.deployment,
            configure=self._configure,
            ride=self._ride,
        )

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
