"""The SQLite store: durable state on one file, shared by the processes of one host.

Layout (schema version 3; a schema 1 or 2 file is upgraded in place when opened, see ``sqlite_schema``)::

    meta(id = 1, schema_version, store_id)       one row: the store's identity
    deployments(name, revision, audit_chain_from, one row per deployment: `revision` is what its
                audit_head, mirrored_seq)        followers poll; its audit chain's bounds
    state(deployment, json)                      each deployment's ControlState document (without bundles)
    bundles(deployment, version_id, digest, json) canonical bundle JSON of every retained version
    audit(seq, at, action, ..., revision, hash,  append-only (triggers refuse UPDATE, DELETE, reused seq);
          origin, deployment)                    `origin` is the OS account and host that ran the operation
    health(deployment, version_id, bucket_start, counts)  HealthCounts JSON per time bucket
    health_lifetime(deployment, version_id, counts)       lifetime totals (kept when buckets are pruned)

Audit ``seq`` numbers are the store's (one sequence); each deployment's entries form their own hash
chain. A handle's every query names its deployment (see :mod:`rule_engine.stores.deployments`).

Every write is one ``BEGIN IMMEDIATE`` transaction (the database's write lock is taken before
anything is read, so a read-compare-write cannot interleave with another process's), in WAL mode
(readers never block the writer nor each other) with ``synchronous=FULL`` (a commit that returned
is on disk). :meth:`SQLiteStore.commit` compares the revision inside that transaction: a stale
``expected_revision`` raises :class:`ConflictError` and nothing is written. The file (and its
``-wal`` / ``-shm`` companions, which SQLite creates with the same mode) is readable by its owner
only (0600); symbolic links and files writable by others are refused. Every ``sqlite3`` error, and
every row that does not decode, surfaces as :class:`StoreError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs

from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError, StoreError, StoreURLError
from rule_engine.stores._sqlite_fleet import SQLiteFleet
from rule_engine.stores._sqlite_health import SQLiteHealth
from rule_engine.stores.base import StateStore
from rule_engine.stores.deployments import UNBOUND, check_name, name_for, pick
from rule_engine.stores.integrity import (
    AuditCheck,
    AuditRow,
    StateDecoder,
    StoreMark,
    chain_entries,
    check_continuity,
    decode_state,
    meta_problem,
    verify_chain,
)
from rule_engine.stores.sqlite_schema import SCHEMA_VERSION, create_schema, open_file, upgrade

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

DEFAULT_TIMEOUT = 5.0
_AUDIT_COLUMNS = (
    "seq", "at", "action", "version_id", "from_state", "to_state", "actor", "reason", "strategy", "origin"
)  # fmt: skip
_AUDIT_SELECT = f"SELECT {', '.join(_AUDIT_COLUMNS)}, revision, hash FROM audit WHERE deployment = ?"
_META_SELECT = (
    "SELECT d.revision, m.store_id, d.audit_chain_from, d.audit_head FROM meta m"
    " LEFT JOIN deployments d ON d.name = ? WHERE m.id = 1"
)


@dataclass(frozen=True, slots=True)
class _Meta:
    mark: StoreMark
    chain_from: int
    head: str | None
    scope: str  # the deployment this call works on (UNBOUND: none yet)


class SQLiteStore(SQLiteHealth, SQLiteFleet, StateStore):
    """State in one SQLite file (WAL mode), shared safely by threads and processes.

    One connection, guarded by a lock (the manager calls from its lock and from its follower
    thread). ``timeout`` is how long a call waits for another process's write lock before
    raising :class:`StoreError`. With ``create`` (the default when constructing from a path)
    constructing creates the file if it is missing; without it (the default of
    :meth:`from_url` and ``open_store``) nothing is created until the first :meth:`commit`, and
    reads of a missing store raise :class:`StoreError`. Once this object has used a store, it never
    creates one again nor adopts another (see the contract in ``stores/base.py``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        create: bool = True,
        deployment: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.deployment = None if deployment is None else check_name(deployment)
        if str(path) == ":memory:" or not str(path):
            raise StoreURLError("an SQLite store needs a file path (use memory:// for an in-process store)")
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file the connection is on
        self._seen: StoreMark | None = None  # the store this object uses, at the highest revision read
        self._decode = StateDecoder()  # load() reuses the records of versions that did not change
        self._closed = False
        self._create = create
        if create or self.path.exists() or self.path.is_symlink():
            with self._lock:
                self._connect(create=create)

    @classmethod
    def from_url(cls, url: str, *, create: bool = False, deployment: str | None = None) -> SQLiteStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, optionally ``?timeout=SECONDS``."""
        if not url.startswith("sqlite:///"):
            raise StoreURLError(f"not an SQLite store URL: {url!r} (use sqlite:///path/to/state.db)")
        rest, _, query = url[len("sqlite:///") :].partition("?")
        if not rest or rest == ":memory:":
            raise StoreURLError(
                f"{url!r} names no file; an SQLite store is for sharing state between processes "
                "(use memory:// for an in-process store)"
            )
        timeout = DEFAULT_TIMEOUT
        options = parse_qs(query)
        unknown = set(options) - {"timeout"}
        if unknown:
            raise StoreURLError(f"unknown SQLite store option(s) {sorted(unknown)} in {url!r} (known: timeout)")
        if "timeout" in options:
            try:
                timeout = float(options["timeout"][-1])
            except ValueError as exc:
                raise StoreURLError(f"timeout must be a number of seconds in {url!r}") from exc
        return cls(rest, timeout=timeout, create=create, deployment=deployment)

    def scoped(self, name: str) -> SQLiteStore:
        """A handle on deployment ``name`` of this file (its own connection, the same ``create``)."""
        return SQLiteStore(self.path, timeout=self.timeout, create=self._create, deployment=name)

    # --- connection -----------------------------------------------------------------------------

    def _connect(self, *, create: bool) -> None:
        """Connect to the file; create the store only if asked and this object never used one."""
        create = create and self._seen is None
        file_id = open_file(self.path, create=create)
        if file_id is None:
            raise self._missing()
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA recursive_triggers=ON")  # so INSERT OR REPLACE fires the audit's DELETE trigger
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0:
                if not create:
                    raise self._missing("the file holds no store")
                create_schema(conn)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
            if row is not None and row[0] in (1, 2):
                upgrade(conn)
                row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{str(self.path)!r} holds state schema {row[0] if row else None!r}; "
                    f"this version of rule_engine reads schemas 1 to {SCHEMA_VERSION}"
                )
            if _file_id(self.path) != file_id:
                raise StoreError(f"the state file {str(self.path)!r} was replaced while it was being opened")
            self._read_meta(conn, lenient=True)  # refuses another store than the one this object used
        except (sqlite3.Error, UnicodeError) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open the state file {str(self.path)!r}: {_describe(exc, self.timeout)}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn
        self._file = file_id

    def _missing(self, detail: str = "") -> StoreError:
        if self._seen is not None:
            return StoreError(f"the state file {str(self.path)!r} is unavailable: {detail or 'it was removed'}")
        where = f"{str(self.path)!r}" + (f" ({detail})" if detail else "")
        return StoreError(f"no store at {where}; `rule-engine deploy` creates one")

    def _check_file(self, *, create: bool = False) -> sqlite3.Connection:
        """The connection, after checking the file is still the one we opened.

        A file moved away raises :class:`StoreError`; a file replaced by another (moved back, restored
        from a backup) is reopened, and refused if it holds another store or an older revision.
        """
        if self._closed:
            raise StoreError(f"the SQLite store {str(self.path)!r} is closed")
        if self._conn is not None:
            try:
                found = _file_id(self.path)
            except OSError as exc:
                raise StoreError(f"the state file {str(self.path)!r} is unavailable: {exc.strerror or exc}") from exc
            if found != self._file:
                self._conn.close()
                self._conn = None
        if self._conn is None:
            self._connect(create=create)
        if not os.access(self.path, os.R_OK | os.W_OK):
            if not os.path.lexists(self.path):  # moved away between the identity check and this one
                raise self._missing()
            raise StoreError(f"the state file {str(self.path)!r} is not readable and writable by this process")
        assert self._conn is not None
        return self._conn

    def _scope(self, conn: sqlite3.Connection, *, lenient: bool = False) -> str:
        """The deployment this call works on; binds an unbound handle to the only one (see ``deployments``).

        ``lenient``: an unbound handle on a file of several deployments reads none (opening it, to list them).
        """
        if self.deployment is not None:
            return self.deployment
        names = [str(r[0]) for r in conn.execute("SELECT name FROM deployments ORDER BY name")]
        if lenient and len(names) > 1:
            return UNBOUND
        scope = pick(None, names, repr(str(self.path)))
        if scope != UNBOUND:
            self.deployment = scope
        return scope

    def _read_meta(self, conn: sqlite3.Connection, *, lenient: bool = False) -> _Meta:
        """The store's and the deployment's meta, checked (types, and continuity with what this object read)."""
        scope = self._scope(conn, lenient=lenient)
        row = conn.execute(_META_SELECT, (scope,)).fetchone()
        if row is None:
            raise StoreError(f"the meta row of {str(self.path)!r} is missing: the store is corrupt")
        revision, store_id, chain_from, head = row
        if revision is None and chain_from is None and head is None:
            revision, chain_from = 0, 1  # a deployment not committed yet
        problem = meta_problem(revision, store_id, chain_from, head)
        if problem is not None:
            raise StoreError(f"the meta row of {str(self.path)!r} is corrupt: {problem} ({row!r})")
        mark = StoreMark(store_id, revision)
        reason = check_continuity(self._seen, mark)
        if reason is not None:
            raise StoreError(f"{str(self.path)!r}: {reason}")
        self._seen = mark
        return _Meta(mark, chain_from, head, scope)

    @contextmanager
    def _reading(self, what: str, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                conn = self._check_file(create=create)
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"{what} failed on {str(self.path)!r}: {_describe(exc, self.timeout)}") from exc
            except UnicodeError as exc:  # a lone surrogate to write, or stored text that is not UTF-8
                raise StoreError(f"{what} failed on {str(self.path)!r}: text that is not valid Unicode: {exc}") from exc

    @contextmanager
    def _writing(self, what: str, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back if it raises."""
        with self._reading(what, create=create) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _snapshot(self, what: str) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside sees the same committed state."""
        with self._reading(what) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    # --- the contract ---------------------------------------------------------------------------

    def load(self) -> ControlState:
        """The current state (an empty state at revision 0 for a new store)."""
        with self._snapshot("loading the state") as conn:
            meta = self._read_meta(conn)
            revision = meta.mark.revision
            row = conn.execute("SELECT json FROM state WHERE deployment = ?", (meta.scope,)).fetchone()
        if row is None:
            if revision:  # every commit writes the state row: without it the store is corrupt
                raise StoreError(f"the state row of {str(self.path)!r} is missing at revision {revision}")
            return ControlState(revision=revision)
        if not revision:  # a committed deployment has its row in `deployments`: without it the store is corrupt
            raise StoreError(f"the deployments row of {meta.scope!r} in {str(self.path)!r} is missing: it holds state")
        return self._decode(row[0], revision, repr(str(self.path)))

    def revision(self) -> int:
        """The current revision: one single-row SELECT (plus an ``lstat`` of the file)."""
        with self._reading("reading the revision") as conn:
            return self._read_meta(conn).mark.revision

    def identity(self) -> str:
        """The store's id (``meta.store_id``), written when the file was made a store."""
        with self._reading("reading the identity") as conn:
            return self._read_meta(conn, lenient=True).mark.identity

    def mark(self) -> StoreMark:
        """Identity and revision, read together."""
        with self._reading("reading the revision") as conn:
            return self._read_meta(conn).mark

    def verify_audit(self) -> AuditCheck:
        """Check the audit hash chain in one read snapshot, one row at a time."""
        with self._snapshot("verifying the audit log") as conn:
            meta = self._read_meta(conn)
            rows = conn.execute(f"{_AUDIT_SELECT} ORDER BY seq", (meta.scope,))
            return verify_chain(_audit_rows(rows), meta.chain_from, meta.head)

    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        """Write everything in one transaction if the revision is still ``expected_revision``.

        The first commit to a store that does not exist yet creates it.
        """
        with self._lock:  # the mark moves only once the transaction committed
            with self._writing("committing the state", create=True) as conn:
                meta = self._read_meta(conn)
                found = meta.mark.revision
                if found != expected_revision:
                    raise ConflictError(
                        f"state changed concurrently: expected revision {expected_revision}, found {found}"
                    )
                self._refuse_if_mirror(conn)
                committed = replace(state, revision=expected_revision + 1)
                self.deployment = self._write_state(conn, meta, committed, bundles or {}, audit, evicted)
            self._seen = StoreMark(meta.mark.identity, committed.revision)
        return committed

    def _write_state(
        self,
        conn: sqlite3.Connection,
        meta: _Meta,
        committed: ControlState,
        bundles: dict[str, str],
        audit: Sequence[AuditEntry],
        evicted: Sequence[str],
    ) -> str:
        """Write the state at ``committed.revision``, its bundles, evictions and chained audit (in a transaction).

        Returns the deployment written: the handle's, or for an unbound handle on an empty store a new
        one named by :func:`name_for`.
        """
        name = meta.scope if meta.scope != UNBOUND else name_for(committed)
        conn.execute(
            "INSERT INTO state (deployment, json) VALUES (?, ?)"
            " ON CONFLICT (deployment) DO UPDATE SET json = excluded.json",
            (name, json.dumps(committed.to_dict(), separators=(",", ":"))),
        )
        for version_id, text in bundles.items():
            record = committed.versions.get(version_id)
            digest = record.digest if record is not None else hashlib.sha256(text.encode()).hexdigest()
            conn.execute(
                "INSERT OR REPLACE INTO bundles (deployment, version_id, digest, json) VALUES (?, ?, ?, ?)",
                (name, version_id, digest, text),
            )
        conn.executemany("DELETE FROM bundles WHERE deployment = ? AND version_id = ?", [(name, v) for v in evicted])
        seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0])
        chained, head = chain_entries(audit, seq, meta.head, committed.revision)
        rows = [(*(getattr(e, c) for c in _AUDIT_COLUMNS), committed.revision, h, name) for e, h in chained]
        conn.executemany(
            f"INSERT INTO audit ({', '.join(_AUDIT_COLUMNS)}, revision, hash, deployment)"
            f" VALUES ({', '.join('?' * (len(_AUDIT_COLUMNS) + 3))})",
            rows,
        )
        conn.execute(
            "INSERT INTO deployments (name, revision, audit_chain_from, audit_head) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET revision = excluded.revision, audit_head = excluded.audit_head",
            (name, committed.revision, meta.chain_from, head if rows else meta.head),
        )
        return name

    def bundle_json(self, version_id: str) -> str | None:
        """The canonical bundle JSON of a retained version (None if unknown)."""
        with self._reading("reading a bundle") as conn:
            row = conn.execute(
                "SELECT json FROM bundles WHERE deployment = ? AND version_id = ?", (self._scope(conn), version_id)
            ).fetchone()
        if row is None:
            return None
        if not isinstance(row[0], str):
            raise StoreError(f"the stored bundle of {version_id!r} in {str(self.path)!r} is not text")
        return row[0]

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries in the order they were written, optionally of one version, the last ``limit``."""
        sql, params = _AUDIT_SELECT, list[object]()
        if version_id is not None:
            sql += " AND version_id = ?"
            params.append(version_id)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reading("reading the audit log") as conn:
            rows = conn.execute(sql, [self._scope(conn), *params]).fetchall()
        entries = []
        for row in reversed(rows):
            decoded = _audit_row(row)
            if isinstance(decoded, BaseException):
                raise StoreError(f"an audit entry in {str(self.path)!r} is corrupt: {decoded}") from decoded
            entries.append(decoded.entry)
        return entries

    def deployment_names(self) -> list[str]:
        """The deployments this file holds, sorted."""
        with self._reading("listing deployments") as conn:
            return [str(r[0]) for r in conn.execute("SELECT name FROM deployments ORDER BY name")]

    def deployment_states(self) -> dict[str, ControlState]:
        """Every deployment's state, read in one snapshot."""
        with self._snapshot("listing deployments") as conn:
            rows = conn.execute(
                "SELECT d.name, d.revision, s.json FROM deployments d LEFT JOIN state s ON s.deployment = d.name"
                " ORDER BY d.name"
            ).fetchall()
        where = repr(str(self.path))
        return {
            str(name): decode_state(text, int(revision), f"{where} (deployment {name!r})")
            for name, revision, text in rows
        }

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` verdict (``"ok"`` when the file is sound)."""
        with self._reading("checking integrity") as conn:
            return "; ".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall())

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"


def _file_id(path: Path) -> tuple[int, int]:
    found = os.lstat(path)  # lstat: a symbolic link put in place of the file is another file
    return found.st_dev, found.st_ino


def _audit_row(row: Sequence[object]) -> AuditRow | BaseException:
    try:
        return AuditRow.from_columns(dict(zip((*_AUDIT_COLUMNS, "revision", "hash"), row, strict=True)))
    except (TypeError, ValueError) as exc:
        return exc


def _audit_rows(cursor: sqlite3.Cursor) -> Iterator[AuditRow | BaseException]:
    for row in cursor:
        yield _audit_row(row)


def _describe(exc: sqlite3.Error | UnicodeError, timeout: float) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"the state file is locked by another process (waited {timeout:g} s): {text}"
    if "not a database" in text:
        return f"the file is not an SQLite database: {text}"
    return f"{type(exc).__name__}: {text}"
