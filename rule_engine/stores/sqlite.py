"""The SQLite store: durable state on one file, shared by the processes of one host.

Layout (schema version 1)::

    meta(id = 1, schema_version, revision)       one row; `revision` is what followers poll
    state(id = 1, json)                          the ControlState document (without bundles)
    bundles(version_id, digest, json)            canonical bundle JSON of every retained version
    audit(seq, at, action, version_id, ..., revision, origin)  append-only: triggers refuse UPDATE and DELETE
                                                 (`origin` was added in place to files made before it)
    health(version_id, bucket_start, counts)     HealthCounts JSON per time bucket
    health_lifetime(version_id, counts)          lifetime totals (kept when buckets are pruned)

Every write is one ``BEGIN IMMEDIATE`` transaction (the database's write lock is taken before
anything is read, so a read-compare-write cannot interleave with another process's), in WAL mode
(readers never block the writer nor each other) with ``synchronous=FULL`` (a commit that returned
is on disk). :meth:`SQLiteStore.commit` compares the revision inside that transaction: a stale
``expected_revision`` raises :class:`ConflictError` and nothing is written. The file (and its
``-wal`` / ``-shm`` companions, which SQLite creates with the same mode) is readable by its owner
only (0600). Every ``sqlite3`` error surfaces as :class:`StoreError` raised from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs

from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError, StoreError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import StateStore

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    version_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    version_id TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    strategy TEXT,
    revision INTEGER NOT NULL,
    origin TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_version ON audit (version_id, seq);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS health (
    version_id TEXT NOT NULL,
    bucket_start REAL NOT NULL,
    counts TEXT NOT NULL,
    PRIMARY KEY (version_id, bucket_start)
);
CREATE INDEX IF NOT EXISTS health_by_start ON health (bucket_start);
CREATE TABLE IF NOT EXISTS health_lifetime (
    version_id TEXT PRIMARY KEY,
    counts TEXT NOT NULL
);
"""


class SQLiteStore(StateStore):
    """State in one SQLite file (WAL mode), shared safely by threads and processes.

    One connection, guarded by a lock (the manager calls from its lock and from its follower
    thread). ``timeout`` is how long a call waits for another process's write lock before
    raising :class:`StoreError`. Constructing opens (and if needed creates) the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = Path(path)
        if str(path) == ":memory:" or not str(path):
            raise StoreURLError("an SQLite store needs a file path (use memory:// for an in-process store)")
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._closed = False
        self._connect()

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
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
        return cls(rest, timeout=timeout)

    # --- connection -----------------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                stat = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"cannot open the state file {str(self.path)!r}: {exc.strerror or exc}") from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0:
                try:  # one script, one transaction: processes opening a new file at once create it once
                    conn.executescript(
                        f"BEGIN IMMEDIATE; {_SCHEMA} INSERT OR IGNORE INTO meta (id, schema_version, revision)"
                        f" VALUES (1, {SCHEMA_VERSION}, 0); COMMIT;"
                    )
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
            if row is None or row[0] != SCHEMA_VERSION:
                raise StoreError(
                    f"{str(self.path)!r} holds state schema {row[0] if row else None!r}; "
                    f"this version of rule_engine reads schema {SCHEMA_VERSION}"
                )
            _add_origin_column(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"cannot open the state file {str(self.path)!r}: {_describe(exc, self.timeout)}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn
        self._identity = (stat.st_dev, stat.st_ino)

    def _check_file(self) -> sqlite3.Connection:
        """The connection, after checking the file is still the one we opened.

        A file moved away raises :class:`StoreError`; a file replaced by another (moved back, restored
        from a backup) is reopened, so a follower recovers when the store returns.
        """
        if self._closed:
            raise StoreError(f"the SQLite store {str(self.path)!r} is closed")
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise StoreError(f"the state file {str(self.path)!r} is unavailable: {exc.strerror or exc}") from exc
        if self._conn is None or (stat.st_dev, stat.st_ino) != self._identity:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._connect()
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise StoreError(f"the state file {str(self.path)!r} is not readable and writable by this process")
        assert self._conn is not None
        return self._conn

    @contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._check_file()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"{what} failed on {str(self.path)!r}: {_describe(exc, self.timeout)}") from exc

    @contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back if it raises."""
        with self._reading(what) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- the contract ---------------------------------------------------------------------------

    def load(self) -> ControlState:
        """The current state (an empty state at revision 0 for a new store)."""
        with self._reading("loading the state") as conn:
            conn.execute("BEGIN")  # one read snapshot for both rows
            try:
                revision = conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()[0]
                row = conn.execute("SELECT json FROM state WHERE id = 1").fetchone()
            finally:
                conn.execute("COMMIT")
        if row is None:
            return ControlState(revision=int(revision))
        try:
            state = ControlState.from_dict(json.loads(row[0]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the state stored in {str(self.path)!r} is unreadable: {exc}") from exc
        return replace(state, revision=int(revision))

    def revision(self) -> int:
        """The current revision: one single-row SELECT (plus a ``stat`` of the file)."""
        with self._reading("reading the revision") as conn:
            return int(conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()[0])

    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        """Write everything in one transaction if the revision is still ``expected_revision``."""
        with self._writing("committing the state") as conn:
            found = int(conn.execute("SELECT revision FROM meta WHERE id = 1").fetchone()[0])
            if found != expected_revision:
                raise ConflictError(f"state changed concurrently: expected revision {expected_revision}, found {found}")
            committed = replace(state, revision=expected_revision + 1)
            conn.execute(
                "INSERT INTO state (id, json) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET json = excluded.json",
                (json.dumps(committed.to_dict(), separators=(",", ":")),),
            )
            for version_id, text in (bundles or {}).items():
                record = committed.versions.get(version_id)
                digest = record.digest if record is not None else hashlib.sha256(text.encode()).hexdigest()
                conn.execute(
                    "INSERT OR REPLACE INTO bundles (version_id, digest, json) VALUES (?, ?, ?)",
                    (version_id, digest, text),
                )
            conn.executemany("DELETE FROM bundles WHERE version_id = ?", [(v,) for v in evicted])
            conn.executemany(
                "INSERT INTO audit (at, action, version_id, from_state, to_state, actor, reason, strategy, revision,"
                " origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.at,
                        e.action,
                        e.version_id,
                        e.from_state,
                        e.to_state,
                        e.actor,
                        e.reason,
                        e.strategy,
                        committed.revision,
                        e.origin,
                    )
                    for e in audit
                ],
            )
            conn.execute("UPDATE meta SET revision = ? WHERE id = 1", (committed.revision,))
        return committed

    def bundle_json(self, version_id: str) -> str | None:
        """The canonical bundle JSON of a retained version (None if unknown)."""
        with self._reading("reading a bundle") as conn:
            row = conn.execute("SELECT json FROM bundles WHERE version_id = ?", (version_id,)).fetchone()
        return str(row[0]) if row is not None else None

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries in the order they were written, optionally of one version, the last ``limit``."""
        sql = "SELECT seq, at, action, version_id, from_state, to_state, actor, reason, strategy, origin FROM audit"
        params: list[object] = []
        if version_id is not None:
            sql += " WHERE version_id = ?"
            params.append(version_id)
        sql += " ORDER BY seq DESC"
        if limit:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reading("reading the audit log") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [
            AuditEntry(
                at=at, action=action, version_id=vid, from_state=from_state, to_state=to_state,
                actor=actor, reason=reason, strategy=strategy, seq=seq, origin=origin,
            )
            for seq, at, action, vid, from_state, to_state, actor, reason, strategy, origin in reversed(rows)
        ]  # fmt: skip

    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        """Add ``delta`` to the bucket and to the lifetime totals (one transaction)."""
        self.add_health_many([(version_id, bucket_start, delta)])

    def add_health_many(self, deltas: Sequence[tuple[str, float, HealthCounts]]) -> None:
        """Add several deltas in one transaction: all are counted or none is."""
        if not deltas:
            return
        with self._writing("adding health counters") as conn:
            for version_id, bucket_start, delta in deltas:
                row = conn.execute(
                    "SELECT counts FROM health WHERE version_id = ? AND bucket_start = ?", (version_id, bucket_start)
                ).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO health (version_id, bucket_start, counts) VALUES (?, ?, ?)",
                    (version_id, bucket_start, _dump(_counts(row) + delta)),
                )
                row = conn.execute("SELECT counts FROM health_lifetime WHERE version_id = ?", (version_id,)).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO health_lifetime (version_id, counts) VALUES (?, ?)",
                    (version_id, _dump(_counts(row) + delta)),
                )

    def health(self, version_ids: Sequence[str], since: float | None = None) -> dict[str, HealthCounts]:
        """Each version's counters summed over buckets starting at or after ``since`` (lifetime if None)."""
        totals = {v: HealthCounts() for v in version_ids}
        if not totals:
            return totals
        marks = ",".join("?" * len(totals))
        with self._reading("reading health counters") as conn:
            if since is None:
                rows = conn.execute(
                    f"SELECT version_id, counts FROM health_lifetime WHERE version_id IN ({marks})", list(totals)
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT version_id, counts FROM health WHERE version_id IN ({marks}) AND bucket_start >= ?",
                    [*totals, since],
                ).fetchall()
        for version_id, counts in rows:
            totals[version_id] = totals[version_id] + _counts((counts,))
        return totals

    def prune_health(self, before: float) -> None:
        """Drop health buckets that start before ``before`` (lifetime totals are kept)."""
        with self._writing("pruning health buckets") as conn:
            conn.execute("DELETE FROM health WHERE bucket_start < ?", (before,))

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


def _counts(row: Sequence[object] | None) -> HealthCounts:
    return HealthCounts.from_dict(json.loads(str(row[0]))) if row is not None else HealthCounts()


def _dump(counts: HealthCounts) -> str:
    return json.dumps(counts.to_dict(), separators=(",", ":"))


def _describe(exc: sqlite3.Error, timeout: float) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"the state file is locked by another process (waited {timeout:g} s): {text}"
    if "not a database" in text:
        return f"the file is not an SQLite database: {text}"
    return f"{type(exc).__name__}: {text}"


def _add_origin_column(conn: sqlite3.Connection) -> None:
    """Add ``audit.origin`` to a file made before it existed (in place; older rows keep NULL)."""
    if any(row[1] == "origin" for row in conn.execute("PRAGMA table_info(audit)")):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:  # another process may have added it while we waited for the write lock
        if not any(row[1] == "origin" for row in conn.execute("PRAGMA table_info(audit)")):
            conn.execute("ALTER TABLE audit ADD COLUMN origin TEXT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
