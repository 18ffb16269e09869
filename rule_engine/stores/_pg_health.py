"""The PostgreSQL store's health counters (a mixin of :class:`~rule_engine.stores.postgres.PostgresStore`).

Deltas are upserts that add columns in SQL (see :mod:`rule_engine.stores._pg_schema`): nothing is read
back and rewritten, so flushes from many processes add up. Every row carries its deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from rule_engine.serving.counts import HealthCounts
from rule_engine.stores._pg_rows import HEALTH_SELECT, health_columns, health_of
from rule_engine.stores._pg_schema import UPSERT_BUCKET, UPSERT_LIFETIME

__all__ = ["PgHealth"]

T = TypeVar("T")
Conn = Any


class PgHealth:
    """Health buckets and lifetime totals of the handle's deployment."""

    url: str

    if TYPE_CHECKING:

        def _run(self, what: str, work: Callable[[Any], T], *, write: bool = False, check_schema: bool = True) -> T: ...
        def _scope(self, conn: Any) -> str: ...

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
            scope = self._scope(conn)
            with conn.cursor() as many:
                many.executemany(UPSERT_BUCKET, [(scope, *row) for row in bucket_rows])
                many.executemany(UPSERT_LIFETIME, [(scope, *row) for row in lifetime_rows])

        self._run("adding health counters", work, write=True)

    def health(
        self, version_ids: Sequence[str], since: float | None = None, until: float | None = None
    ) -> dict[str, HealthCounts]:
        """Each version's counters over buckets starting in ``[since, until]`` (lifetime if both are None)."""
        totals = {v: HealthCounts() for v in version_ids}
        if not totals:
            return totals
        if since is None and until is None:
            sql = f"SELECT {HEALTH_SELECT} FROM health_lifetime WHERE deployment = %s AND version_id = ANY(%s)"
            params: tuple[object, ...] = (list(totals),)
        else:
            low = float("-inf") if since is None else since
            high = float("inf") if until is None else until
            sql = (
                f"SELECT {HEALTH_SELECT} FROM health"
                " WHERE deployment = %s AND version_id = ANY(%s) AND bucket_start >= %s AND bucket_start <= %s"
            )
            params = (list(totals), low, high)

        def work(conn: Conn) -> list[tuple[Any, ...]]:
            return list(conn.execute(sql.encode(), (self._scope(conn), *params)).fetchall())

        for row in self._run("reading health counters", work):
            version_id, counts = health_of(row, repr(self.url))
            totals[version_id] = totals[version_id] + counts
        return totals

    def prune_health(self, before: float) -> None:
        """Drop health buckets that start before ``before`` (lifetime totals are kept)."""

        def work(conn: Conn) -> None:
            conn.execute("DELETE FROM health WHERE deployment = %s AND bucket_start < %s", (self._scope(conn), before))

        self._run("pruning health buckets", work, write=True)
