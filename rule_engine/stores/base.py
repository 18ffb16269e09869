"""The state store interface (the contract every backend honours).

A store holds any number of named deployments (:mod:`rule_engine.stores.deployments`), and a store
object is a handle on one of them: bound to a name (``open_store(url, deployment=NAME)``,
:meth:`StateStore.scoped`), or unbound, binding itself to the only one the store holds. For its
deployment a handle keeps four things: the :class:`ControlState` document (one revision number for
the deployment's whole state), the bundle text of every retained version, an append-only audit
trail, and health counters in time buckets. Its contract (each point is per deployment: a commit to
one deployment never moves another's revision, audit chain, bundles or health):

- :meth:`commit` is atomic: the new state, the new bundles, the audit entries and the evictions are
  all written or none is. It succeeds only if the stored revision still equals
  ``expected_revision`` (optimistic concurrency); otherwise it raises :class:`ConflictError` and
  writes nothing. The new revision is ``expected_revision + 1``.
- :meth:`revision` is cheap (followers poll it to detect changes made by other processes).
- :meth:`add_health` adds deltas (never overwrites), so counters from many processes add up.
- Audit entries are never changed or removed through this interface. Each entry carries a hash
  chained to its predecessor's (written at commit, see :func:`~rule_engine.stores.integrity.audit_hash`);
  :meth:`verify_audit` checks the chain.
- A store has an identity (:meth:`identity`): a random id written when it is created, never
  changed. A store object never silently becomes another store: once it has read identity ``I`` at
  revision ``R``, a read that finds another identity (the store was deleted and recreated, or
  replaced) or a revision below ``R`` (restored from an older backup) raises :class:`StoreError`
  (see :func:`~rule_engine.stores.integrity.check_continuity`); reopen to adopt it.
- Opening does not create a store unless asked (``open_store(url, create=True)``); reads of a
  store that does not exist raise :class:`StoreError`.
- The fleet (:mod:`rule_engine.control.instances`): :meth:`register_instance` / :meth:`heartbeat`
  upsert one row per serving process, :meth:`instances` lists them, :meth:`forget_instance` /
  :meth:`forget_instances` drop them. These rows are not part of the state: writing them never moves
  the revision nor the audit. A store that keeps no fleet (the defaults below) lists none.
- :meth:`deployment_names` / :meth:`deployment_states` / :meth:`deployments` list the store's
  deployments (those committed at least once), whatever the handle is bound to.
- Backend failures surface as :class:`StoreError` (raised ``from`` the backend's exception), and
  so does anything read back that does not decode (a corrupt state row, a mistyped revision).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence

from rule_engine.control.instances import InstanceInfo
from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import StoreError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.deployments import DeploymentSummary, check_name, name_for, require, summaries
from rule_engine.stores.integrity import AuditCheck, StoreMark

__all__ = ["DEFAULT_STORE_URL", "StateStore", "open_deployment", "open_store", "store_url_from_env"]

DEFAULT_STORE_URL = "sqlite:///.rule-engine/state.db"


class StateStore(ABC):
    """A handle on one deployment's state in a store that may hold several."""

    url: str = ""
    deployment: str | None = None  # the deployment this handle is bound to (None: not bound yet)

    def scoped(self, name: str) -> StateStore:
        """A handle on deployment ``name`` of the same store (new or existing); close it when done.

        The built-in backends hold many; a store that holds one deployment (the default here) refuses
        any other name.
        """
        if name == self._single_name():
            return self
        raise StoreError(f"the store {self.url!r} holds one deployment, {self._single_name()!r}; not {name!r}")

    def deployment_names(self) -> list[str]:
        """The names of the store's deployments (those committed at least once), sorted."""
        return [self._single_name()] if self.revision() else []

    def deployment_states(self) -> dict[str, ControlState]:
        """Every deployment's current state, by name, read in one snapshot (O(deployments))."""
        state = self.load()
        return {self._single_name(): state} if state.revision else {}

    def _single_name(self) -> str:
        """The name of a one-deployment store: its handle's, else its active policy's (``name_for``)."""
        return self.deployment or name_for(self.load())

    def deployments(self) -> list[DeploymentSummary]:
        """A summary of each deployment (name, revision, active version, rollout), by name."""
        return summaries(self.deployment_states())

    @abstractmethod
    def load(self) -> ControlState:
        """The current state (an empty state at revision 0 for a new store)."""

    @abstractmethod
    def revision(self) -> int:
        """The current revision; cheap enough to poll."""

    @abstractmethod
    def identity(self) -> str:
        """The store's id: random, written when the store was created, never changed.

        Raises :class:`StoreError` if the store does not exist (yet) or was replaced by another.
        """

    def mark(self) -> StoreMark:
        """Which store this is and its current revision (for :func:`check_continuity`)."""
        return StoreMark(self.identity(), self.revision())

    @abstractmethod
    def verify_audit(self) -> AuditCheck:
        """Check the audit hash chain from its first hashed entry to the recorded head.

        Reads every entry once (O(entries) time, O(1) memory). A broken chain is reported in the
        result, not raised; :class:`StoreError` only when the store cannot be read.
        """

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
    def health(
        self, version_ids: Sequence[str], since: float | None = None, until: float | None = None
    ) -> dict[str, HealthCounts]:
        """Each version's counters summed over buckets starting within ``[since, until]``.

        Lifetime totals when both are None; a missing bound is open. ``until`` keeps buckets
        written by a process whose clock ran ahead out of a window that ends now.
        """

    def prune_health(self, before: float) -> None:  # noqa: B027 - optional for backends
        """Drop health buckets that start before ``before`` (lifetime totals are kept)."""

    # --- the fleet (optional for backends: a store that cannot be shared keeps none) -----------------

    def register_instance(self, info: InstanceInfo) -> None:  # noqa: B027 - optional for backends
        """Write (insert or replace) the row of one serving process."""

    def heartbeat(self, info: InstanceInfo) -> None:
        """Refresh the row of one serving process (the same upsert as :meth:`register_instance`)."""
        self.register_instance(info)

    def instances(self) -> list[InstanceInfo]:
        """Every registered instance (expired ones included until forgotten), in no particular order."""
        return []

    def forget_instance(self, instance_id: str) -> None:  # noqa: B027 - optional for backends
        """Drop one instance's row (a process that shut down cleanly); unknown ids are ignored."""

    def forget_instances(self, last_seen_before: float) -> int:
        """Drop instances not seen since ``last_seen_before``; how many were dropped."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections and files."""


def store_url_from_env(url: str | None = None) -> str:
    """``url``, else ``$RULE_ENGINE_STORE``, else the default SQLite file."""
    return url or os.environ.get("RULE_ENGINE_STORE") or DEFAULT_STORE_URL


def open_store(url: str, *, create: bool = False, deployment: str | None = None) -> StateStore:
    """Open the store a URL names: ``memory://``, ``sqlite:///path/to/state.db`` or ``postgresql://...``.

    The handle is bound to ``deployment`` (a valid name, see :func:`check_name`), or unbound when None
    (see :mod:`rule_engine.stores.deployments`).

    Without ``create`` a store that does not exist is not created: reading it raises
    :class:`StoreError` ("no store at ..."), and only a commit creates it. Writing commands pass
    ``create=True``. (A ``memory://`` store is new whenever it is opened.) The PostgreSQL backend
    (``postgresql://`` or ``postgres://``) needs the ``postgres`` extra; without it this raises
    ImportError naming the extra.
    """
    from rule_engine.stores.memory import MemoryStore

    name = None if deployment is None else check_name(deployment)
    if url in ("memory://", "memory:"):
        return MemoryStore(deployment=name)
    if url.startswith("sqlite://"):
        from rule_engine.stores.sqlite import SQLiteStore

        store: StateStore = SQLiteStore.from_url(url, create=create, deployment=name)
        return store
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from rule_engine.stores.postgres import PostgresStore
        except ImportError as exc:
            raise ImportError(f"{exc}; install it with: pip install 'rule_engine[postgres]'") from exc
        return PostgresStore.from_url(url, create=create, deployment=name)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise StoreURLError(
        f"unsupported store URL {url!r} (scheme {scheme!r}); "
        "use sqlite:///path/to/state.db, postgresql://user@host/db or memory://"
    )


def open_deployment(url: str | StateStore | None, deployment: str | None = None, *, create: bool = False) -> StateStore:
    """The handle ``DeploymentManager.open`` works on: deployment ``deployment`` of the store at ``url``.

    ``url`` None: ``$RULE_ENGINE_STORE``, else the default file; a store object is used as it is, or
    :meth:`~StateStore.scoped` to ``deployment``. ``deployment`` None: unbound (the only one; see
    :mod:`rule_engine.stores.deployments`). Without ``create`` a named deployment the store does not
    hold is a :class:`~rule_engine.errors.DeploymentNotFoundError` listing those it holds.
    """
    if isinstance(url, StateStore):
        return url if deployment is None or deployment == url.deployment else url.scoped(check_name(deployment))
    store = open_store(store_url_from_env(url), create=create, deployment=deployment)
    if deployment is not None and not create:
        try:
            require(deployment, store.deployment_names(), repr(store.url))
        except BaseException:
            store.close()
            raise
    return store
