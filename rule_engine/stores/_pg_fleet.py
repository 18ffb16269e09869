"""The PostgreSQL store's fleet rows (a mixin of :class:`~rule_engine.stores.postgres.PostgresStore`).

One additive table, ``instances(instance_id text PRIMARY KEY, last_seen double precision, doc jsonb,
deployment text)`` (the deployment column since schema 4: a handle lists and expires its own deployment's
rows, and rows written before the store held a deployment, under ``''``), one row per serving process (:class:`~rule_engine.control.instances.InstanceInfo` JSON). Writes are
single-row upserts (``INSERT ... ON CONFLICT DO UPDATE``): about one per process per second. The table
is created by :data:`FLEET_SQL` (``IF NOT EXISTS``, so also by the first registration of a role that
may create tables); a role set up as in docs/fleet.md gets :data:`FLEET_GRANTS` on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from rule_engine.control.instances import InstanceInfo
from rule_engine.errors import StoreError

__all__ = ["FLEET_GRANTS", "FLEET_SQL", "PgFleet"]

FLEET_SQL = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id text PRIMARY KEY,
    last_seen double precision NOT NULL,
    doc jsonb NOT NULL
)
"""
FLEET_GRANTS = "GRANT SELECT, INSERT, UPDATE, DELETE ON instances TO {role};"

T = TypeVar("T")


class PgFleet:
    """Fleet rows for the PostgreSQL store (uses its ``_run``)."""

    _fleet_table_ok = False

    if TYPE_CHECKING:

        def _run(self, what: str, work: Callable[[Any], T], *, write: bool = False, check_schema: bool = True) -> T: ...
        def _scope(self, conn: Any) -> str: ...

    def _ensure_fleet_table(self, conn: Any) -> None:
        if not self._fleet_table_ok:
            conn.execute(FLEET_SQL)
            self._fleet_table_ok = True

    def register_instance(self, info: InstanceInfo) -> None:
        """Upsert one instance's row: one statement, one round trip (autocommit: atomic by itself).

        Not wrapped in ``BEGIN``/``COMMIT`` (two more round trips per heartbeat, one right after
        every pickup); the upsert is idempotent, so a call retried on a fresh connection is safe.
        """
        doc = json.dumps(info.to_dict(), separators=(",", ":"))

        def work(conn: Any) -> None:
            self._ensure_fleet_table(conn)
            conn.execute(
                "INSERT INTO instances (instance_id, last_seen, doc, deployment) VALUES (%s, %s, %s::jsonb, %s)"
                " ON CONFLICT (instance_id) DO UPDATE SET last_seen = excluded.last_seen, doc = excluded.doc,"
                " deployment = excluded.deployment",
                (info.instance_id, info.last_seen, doc, self._scope(conn)),
            )

        self._run("registering an instance", work)

    def instances(self) -> list[InstanceInfo]:
        """Every registered instance."""

        def work(conn: Any) -> list[Any]:
            if not self._fleet_table_ok:  # once seen, the table stays: one statement per read from then on
                if conn.execute("SELECT to_regclass('instances')").fetchone()[0] is None:
                    return []
                self._fleet_table_ok = True
            return list(
                conn.execute("SELECT doc FROM instances WHERE deployment IN (%s, '')", (self._scope(conn),)).fetchall()
            )

        rows = self._run("listing instances", work)
        try:
            return [InstanceInfo.from_dict(row[0] if isinstance(row[0], dict) else json.loads(row[0])) for row in rows]
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"an instance row is corrupt: {exc}") from exc

    def forget_instance(self, instance_id: str) -> None:
        """Drop one instance's row."""

        def work(conn: Any) -> None:
            self._ensure_fleet_table(conn)
            conn.execute("DELETE FROM instances WHERE instance_id = %s", (instance_id,))

        self._run("forgetting an instance", work, write=True)

    def forget_instances(self, last_seen_before: float) -> int:
        """Drop instances not seen since ``last_seen_before``."""

        def work(conn: Any) -> int:
            self._ensure_fleet_table(conn)
            return int(
                conn.execute(
                    "DELETE FROM instances WHERE deployment IN (%s, '') AND last_seen < %s",
                    (self._scope(conn), last_seen_before),
                ).rowcount
            )

        return self._run("forgetting expired instances", work, write=True)
