"""The state store interface (the contract every backend honours).

A store keeps four things: the :class:`ControlState` document (one revision number for the whole
state), the bundle text of every retained version, an append-only audit trail, and health counters
in time buckets. Its contract:

- :meth:`commit` is atomic: the new state, the new bundles, the audit entries and the evictions are
  all written or none is. It succeeds only if the stored revision still equals
  ``expected_revision`` (optimistic concurrency); otherwise it raises :class:`ConflictError` and
  writes nothing. The new revision is ``expected_revision + 1``.
- :meth:`revision` is cheap (followers poll it to detect changes made by other processes).
- :meth:`add_health` adds deltas (never overwrites), so counters from many processes add up.
- Audit entries are never changed or removed through this interface.
- Backend failures surface as :class:`StoreError` (raised ``from`` the backend's exception).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import StoreURLError
from rule_engine.serving.counts import HealthCounts

__all__ = ["DEFAULT_STORE_URL", "StateStore", "open_store", "store_url_from_env"]

DEFAULT_STORE_URL = "sqlite:///.rule-engine/state.db"


class StateStore(ABC):
    """Where one deployment's state lives."""

    url: str = ""

    @abstractmethod
    def load(self) -> ControlState:
        """The current state (an empty state at revision 0 for a new store)."""

    @abstractmethod
    def revision(self) -> int:
        """The current revision; cheap enough to poll."""

    @abstractmethod
    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        """Write ``state`` as revision ``expected_revision + 1``; return it with that revision.

        ``bundles`` maps new version ids to their canonical bundle JSON; ``evicted`` lists version
        ids whose bundle text may be dropped. Raise :class:`ConflictError` if the stored revision is
        not ``expected_revision``.
        """

    @abstractmethod
    def bundle_json(self, version_id: str) -> str | None:
        """The canonical bundle JSON of a retained version (None if unknown)."""

    @abstractmethod
    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries in the order they were written, optionally of one version, the last ``limit``."""

    @abstractmethod
    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        """Add ``delta`` to the version's counters in the bucket starting at ``bucket_start``."""

    def add_health_many(self, deltas: Sequence[tuple[str, float, HealthCounts]]) -> None:
        """Add several ``(version_id, bucket_start, delta)``; backends that can do it in one transaction do."""
        for version_id, bucket_start, delta in deltas:
            self.add_health(version_id, bucket_start, delta)

    @abstractmethod
    def health(self, version_ids: Sequence[str], since: float | None = None) -> dict[str, HealthCounts]:
        """Each version's counters summed over buckets starting at or after ``since`` (all if None)."""

    def prune_health(self, before: float) -> None:  # noqa: B027 - optional for backends
        """Drop health buckets that start before ``before`` (lifetime totals are kept)."""

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections and files."""


def store_url_from_env(url: str | None = None) -> str:
    """``url``, else ``$RULE_ENGINE_STORE``, else the default SQLite file."""
    return url or os.environ.get("RULE_ENGINE_STORE") or DEFAULT_STORE_URL


def open_store(url: str) -> StateStore:
    """Open the store a URL names: ``memory://``, ``sqlite:///path/to/state.db`` or ``postgresql://...``.

    The PostgreSQL backend (``postgresql://`` or ``postgres://``) needs the ``postgres`` extra; without
    it this raises ImportError naming the extra.
    """
    from rule_engine.stores.memory import MemoryStore

    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite://"):
        from rule_engine.stores.sqlite import SQLiteStore

        store: StateStore = SQLiteStore.from_url(url)
        return store
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from rule_engine.stores.postgres import PostgresStore
        except ImportError as exc:
            raise ImportError(f"{exc}; install it with: pip install 'rule_engine[postgres]'") from exc
        return PostgresStore.from_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StoreURLError(
        f"unsupported store URL {url!r} (scheme {scheme!r}); use sqlite:///path/to/state.db or memory://"
    )
