"""The SQLite store's fleet rows and its mirror mode (a mixin of :class:`~rule_engine.stores.sqlite.SQLiteStore`).

Additive tables, created by the first write that needs them (``CREATE TABLE IF NOT EXISTS``: older
versions of the library ignore them, and the schema version does not move)::

    instances(instance_id, last_seen, doc,          one row per serving process (InstanceInfo JSON), under
              deployment)                           the deployment it serves ('' before the store held one)
    mirror(id = 1, upstream, upstream_identity,     present only in a mirror file: the store it copies (the
           audit_seq)                               last upstream audit seq copied is per deployment, in
                                                    ``deployments.mirrored_seq``)
    health_outbox(seq, version_id, bucket_start,    in a mirror, health deltas flushed by local processes,
                  counts, deployment)               waiting for the mirror process to forward them upstream

A mirror file refuses :meth:`commit` with a :class:`StoreError` naming its upstream; only
:meth:`replicate` (the mirror process) writes its state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rule_engine.control.instances import InstanceInfo
from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import StoreError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.integrity import StoreMark

if TYPE_CHECKING:
    import threading
    from pathlib import Path

__all__ = ["MirrorMark", "SQLiteFleet"]

_FLEET_TABLES = (
    "CREATE TABLE IF NOT EXISTS instances (instance_id TEXT PRIMARY KEY, last_seen REAL NOT NULL, doc TEXT NOT NULL,"
    " deployment TEXT NOT NULL DEFAULT '')",
    "CREATE TABLE IF NOT EXISTS mirror (id INTEGER PRIMARY KEY CHECK (id = 1), upstream TEXT NOT NULL,"
    " upstream_identity TEXT NOT NULL, audit_seq INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS health_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, version_id TEXT NOT NULL,"
    " bucket_start REAL NOT NULL, counts TEXT NOT NULL, deployment TEXT NOT NULL DEFAULT '')",
)


@dataclass(frozen=True, slots=True)
class MirrorMark:
    """What a mirror file copies: the upstream's URL (password redacted), identity, last audit seq copied."""

    upstream: str
    upstream_identity: str
    audit_seq: int


class SQLiteFleet:
    """Fleet rows and mirror mode for the SQLite store (uses its connection helpers)."""

    if TYPE_CHECKING:
        path: Path
        timeout: float
        _lock: threading.RLock
        _seen: StoreMark | None

        def _reading(self, what: str, *, create: bool = False) -> AbstractContextManager[sqlite3.Connection]: ...
        def _writing(self, what: str, *, create: bool = False) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read_meta(self, conn: sqlite3.Connection) -> _MetaLike: ...
        def _scope(self, conn: sqlite3.Connection) -> str: ...

        deployment: str | None

        def _write_state(
            self,
            conn: sqlite3.Connection,
            meta: Any,
            committed: ControlState,
            bundles: dict[str, str],
            audit: Sequence[AuditEntry],
            evicted: Sequence[str],
        ) -> str: ...

    # --- fleet rows -------------------------------------------------------------------------------

    def register_instance(self, info: InstanceInfo) -> None:
        """Write (insert or replace) one instance's row, waiting for the write lock up to the store's timeout."""
        self._put_instance(info, wait=True)

    def heartbeat(self, info: InstanceInfo) -> None:
        """Refresh one instance's row without waiting: if another process holds the write lock, raise at once.

        SQLite's busy handler sleeps in growing steps (up to 100 ms) while it waits; with dozens of
        processes beating at once that, not the write, would delay convergence. A heartbeat that
        finds the file locked raises :class:`StoreError` and the caller retries at its next step.
        """
        self._put_instance(info, wait=False)

    def _put_instance(self, info: InstanceInfo, *, wait: bool) -> None:
        doc = json.dumps(info.to_dict(), separators=(",", ":"))
        with self._lock, self._reading("registering an instance") as conn:
            # A fleet row is rewritten every second: it needs no fsync (WAL with synchronous=NORMAL
            # survives a process crash; a power cut loses at most the last heartbeats, not the state).
            conn.execute("PRAGMA synchronous=NORMAL")
            if not wait:
                conn.execute("PRAGMA busy_timeout=0")
            try:
                with self._writing("registering an instance") as conn:
                    _ensure_tables(conn)
                    conn.execute(
                        "INSERT OR REPLACE INTO instances (instance_id, last_seen, doc, deployment) VALUES (?, ?, ?, ?)",
                        (info.instance_id, info.last_seen, doc, self._scope(conn)),
                    )
            finally:
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")

    def instances(self) -> list[InstanceInfo]:
        """Every registered instance of this deployment (a row that does not decode raises :class:`StoreError`)."""
        with self._reading("listing instances") as conn:
            if not _has_table(conn, "instances"):
                return []
            rows = conn.execute(
                "SELECT doc FROM instances WHERE deployment IN (?, '')", (self._scope(conn),)
            ).fetchall()
        return [_decode(row[0], str(self.path)) for row in rows]

    def forget_instance(self, instance_id: str) -> None:
        """Drop one instance's row."""
        with self._writing("forgetting an instance") as conn:
            if _has_table(conn, "instances"):
                conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def forget_instances(self, last_seen_before: float) -> int:
        """Drop instances not seen since ``last_seen_before``."""
        with self._writing("forgetting expired instances") as conn:
            if not _has_table(conn, "instances"):
                return 0
            return conn.execute(
                "DELETE FROM instances WHERE deployment IN (?, '') AND last_seen < ?",
                (self._scope(conn), last_seen_before),
            ).rowcount

    # --- mirror mode ------------------------------------------------------------------------------

    def mirror_of(self) -> MirrorMark | None:
        """What this file mirrors, or None for an ordinary store."""
        with self._reading("reading the mirror mark") as conn:
            mark = _mirror_mark(conn)
            if mark is None:
                return None
            row = conn.execute("SELECT mirrored_seq FROM deployments WHERE name = ?", (self._scope(conn),)).fetchone()
            return replace(mark, audit_seq=int(row[0]) if row is not None else 0)

    def make_mirror(self, upstream: str, upstream_identity: str) -> MirrorMark:
        """Mark this file a mirror of ``upstream`` (creating the store if needed); returns the mark.

        Refuses (:class:`StoreError`) an ordinary store that holds state, and a mirror of another
        upstream store (another identity): a mirror file copies one store for its whole life.
        """
        with self._writing("marking the store a mirror", create=True) as conn:
            _ensure_tables(conn)
            found = _mirror_mark(conn)
            if found is not None:
                if found.upstream_identity != upstream_identity:
                    raise StoreError(
                        f"{str(self.path)!r} mirrors store {found.upstream_identity} ({found.upstream}), "
                        f"not {upstream_identity} ({upstream}); remove the file to mirror another store"
                    )
                conn.execute("UPDATE mirror SET upstream = ? WHERE id = 1", (upstream,))
                return replace(found, upstream=upstream)
            if conn.execute("SELECT count(*) FROM deployments WHERE revision > 0").fetchone()[0] != 0:
                raise StoreError(
                    f"{str(self.path)!r} is an ordinary store holding state; a mirror needs a new file "
                    "(`rule-engine mirror --to` creates it)"
                )
            conn.execute(
                "INSERT INTO mirror (id, upstream, upstream_identity, audit_seq) VALUES (1, ?, ?, 0)",
                (upstream, upstream_identity),
            )
            return MirrorMark(upstream, upstream_identity, 0)

    def replicate(
        self,
        state: ControlState,
        *,
        bundles: dict[str, str],
        audit: Sequence[AuditEntry],
        evicted: Sequence[str],
    ) -> ControlState:
        """Write the upstream's ``state`` at its own revision (the mirror process's only write path).

        ``audit`` are the upstream entries not copied yet (their ``seq`` is remembered). A revision
        below this file's is refused: the upstream went back in time (restored from a backup).
        """
        with self._lock:
            with self._writing("replicating the upstream state") as conn:
                if _mirror_mark(conn) is None:
                    raise StoreError(f"{str(self.path)!r} is not a mirror; `rule-engine mirror --to` makes one")
                meta = self._read_meta(conn)
                if state.revision < meta.mark.revision:
                    raise StoreError(
                        f"the upstream is at revision {state.revision}, below this mirror's {meta.mark.revision}: "
                        "it was restored from an older copy; remove the mirror file to start over"
                    )
                copied = [replace(e, seq=None) for e in audit]
                self.deployment = name = self._write_state(conn, meta, state, bundles, copied, evicted)
                last = max((e.seq for e in audit if e.seq is not None), default=None)
                if last is not None:
                    conn.execute(
                        "UPDATE deployments SET mirrored_seq = MAX(mirrored_seq, ?) WHERE name = ?", (last, name)
                    )
            self._seen = StoreMark(meta.mark.identity, state.revision)
        return state

    def outbox(self, limit: int = 1000) -> list[tuple[int, str, float, HealthCounts]]:
        """Health deltas local processes flushed into this mirror, oldest first, at most ``limit``."""
        with self._reading("reading the health outbox") as conn:
            if not _has_table(conn, "health_outbox"):
                return []
            rows = conn.execute(
                "SELECT seq, version_id, bucket_start, counts FROM health_outbox WHERE deployment = ?"
                " ORDER BY seq LIMIT ?",
                (self._scope(conn), limit),
            ).fetchall()
        try:
            return [(int(s), str(v), float(b), HealthCounts.from_dict(json.loads(c))) for s, v, b, c in rows]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(f"the health outbox of {str(self.path)!r} is corrupt: {exc}") from exc

    def ack_outbox(self, through_seq: int) -> None:
        """Drop outbox rows up to ``through_seq`` (forwarded upstream)."""
        with self._writing("acknowledging the health outbox") as conn:
            conn.execute(
                "DELETE FROM health_outbox WHERE deployment = ? AND seq <= ?", (self._scope(conn), through_seq)
            )

    # --- hooks called by SQLiteStore inside its transactions -------------------------------------------

    def _refuse_if_mirror(self, conn: sqlite3.Connection) -> None:
        mark = _mirror_mark(conn)
        if mark is not None:
            raise StoreError(
                f"{str(self.path)!r} is a read-only mirror of {mark.upstream}: deploy and operate on the "
                f"upstream (`rule-engine --store {mark.upstream} ...`)"
            )

    def _queue_for_upstream(self, conn: sqlite3.Connection, deltas: Sequence[tuple[str, float, HealthCounts]]) -> None:
        if _mirror_mark(conn) is None:
            return
        scope = self._scope(conn)
        conn.executemany(
            "INSERT INTO health_outbox (version_id, bucket_start, counts, deployment) VALUES (?, ?, ?, ?)",
            [(v, b, json.dumps(d.to_dict(), separators=(",", ":")), scope) for v, b, d in deltas],
        )


if TYPE_CHECKING:
    from typing import Protocol

    class _MetaLike(Protocol):
        @property
        def mark(self) -> StoreMark: ...


def _ensure_tables(conn: sqlite3.Connection) -> None:
    for statement in _FLEET_TABLES:
        conn.execute(statement)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def _mirror_mark(conn: sqlite3.Connection) -> MirrorMark | None:
    if not _has_table(conn, "mirror"):
        return None
    row = conn.execute("SELECT upstream, upstream_identity, audit_seq FROM mirror WHERE id = 1").fetchone()
    return None if row is None else MirrorMark(str(row[0]), str(row[1]), int(row[2]))


def _decode(doc: object, where: str) -> InstanceInfo:
    try:
        data = json.loads(str(doc))
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return InstanceInfo.from_dict(data)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise StoreError(f"an instance row in {where!r} is corrupt: {exc}") from exc
