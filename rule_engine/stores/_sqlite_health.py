"""The SQLite store's health counters (a mixin of :class:`~rule_engine.stores.sqlite.SQLiteStore`).

``health(deployment, version_id, bucket_start, counts)`` and ``health_lifetime(deployment, version_id,
counts)`` hold :class:`HealthCounts` JSON; a delta is read, added and rewritten inside one write
transaction (the file's write lock makes that safe across processes).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from rule_engine.errors import StoreError
from rule_engine.serving.counts import HealthCounts

__all__ = ["SQLiteHealth"]


class SQLiteHealth:
    """Health buckets and lifetime totals of the handle's deployment."""

    if TYPE_CHECKING:

        def _reading(self, what: str, *, create: bool = False) -> AbstractContextManager[sqlite3.Connection]: ...
        def _writing(self, what: str, *, create: bool = False) -> AbstractContextManager[sqlite3.Connection]: ...
        def _scope(self, conn: sqlite3.Connection) -> str: ...
        def _queue_for_upstream(
            self, conn: sqlite3.Connection, deltas: Sequence[tuple[str, float, HealthCounts]]
        ) -> None: ...

    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        """Add ``delta`` to the bucket and to the lifetime totals (one transaction)."""
        self.add_health_many([(version_id, bucket_start, delta)])

    def add_health_many(self, deltas: Sequence[tuple[str, float, HealthCounts]]) -> None:
        """Add several deltas in one transaction: all are counted or none is."""
        if not deltas:
            return
        with self._writing("adding health counters") as conn:
            scope = self._scope(conn)
            self._queue_for_upstream(conn, deltas)
            for version_id, bucket_start, delta in deltas:
                key = (scope, version_id, bucket_start)
                row = conn.execute(
                    "SELECT counts FROM health WHERE deployment = ? AND version_id = ? AND bucket_start = ?", key
                ).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO health (deployment, version_id, bucket_start, counts) VALUES (?, ?, ?, ?)",
                    (*key, _dump(_counts(row) + delta)),
                )
                row = conn.execute(
                    "SELECT counts FROM health_lifetime WHERE deployment = ? AND version_id = ?", key[:2]
                ).fetchone()
                conn.execute(
                    "INSERT OR REPLACE INTO health_lifetime (deployment, version_id, counts) VALUES (?, ?, ?)",
                    (*key[:2], _dump(_counts(row) + delta)),
                )

    def health(
        self, version_ids: Sequence[str], since: float | None = None, until: float | None = None
    ) -> dict[str, HealthCounts]:
        """Each version's counters summed over buckets starting within ``[since, until]`` (lifetime if both None)."""
        totals = {v: HealthCounts() for v in version_ids}
        if not totals:
            return totals
        marks = ",".join("?" * len(totals))
        with self._reading("reading health counters") as conn:
            scope = self._scope(conn)
            if since is None and until is None:
                rows = conn.execute(
                    f"SELECT version_id, counts FROM health_lifetime WHERE deployment = ? AND version_id IN ({marks})",
                    [scope, *totals],
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT version_id, counts FROM health WHERE deployment = ? AND version_id IN ({marks})"
                    " AND bucket_start >= ? AND bucket_start <= ?",
                    [scope, *totals, -math.inf if since is None else since, math.inf if until is None else until],
                ).fetchall()
        for version_id, counts in rows:
            totals[version_id] = totals[version_id] + _counts((counts,))
        return totals

    def prune_health(self, before: float) -> None:
        """Drop health buckets that start before ``before`` (lifetime totals are kept)."""
        with self._writing("pruning health buckets") as conn:
            conn.execute("DELETE FROM health WHERE deployment = ? AND bucket_start < ?", (self._scope(conn), before))


def _counts(row: Sequence[object] | None) -> HealthCounts:
    if row is None:
        return HealthCounts()
    try:
        data = json.loads(str(row[0]))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        return HealthCounts.from_dict(data)
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        raise StoreError(f"stored health counters are corrupt: {exc}") from exc


def _dump(counts: HealthCounts) -> str:
    return json.dumps(counts.to_dict(), separators=(",", ":"))
