"""Publisher: turns a stored :class:`ControlState` into the :class:`ServingSnapshot` readers see.

It owns the compiled tables, the rollout salts, and the :class:`ServingCell` it publishes into with
one assignment. It is called under the manager's lock; readers never see it, only the cell.

Only the versions that can serve without a recompile stay compiled (:func:`kept_compiled`: what
serves, the rollback target, the newest staged version); any other retained version is compiled
again from the store when it is needed. A table keeps no bundle model: its ``bundle`` is re-read
from the store (digest-checked) on demand.
"""

from __future__ import annotations

from collections.abc import Callable

from rule_engine.bundle.models import RuleBundle, gc_paused
from rule_engine.control.records import ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.targeting import targeting_of
from rule_engine.errors import StoreError, VersionNotFoundError
from rule_engine.evaluation.table import RuleTable
from rule_engine.health.ledger import HealthLedger
from rule_engine.serving.routing import Salt
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import load_checked_bundle

__all__ = ["BundleGone", "Publisher", "Serving", "kept_compiled", "serving_of_snapshot", "serving_of_state"]

Serving = tuple[str | None, str | None, float]  # (stable, candidate, candidate percent)


class BundleGone(StoreError):
    """A version's bundle was not in the store: the state it came from was outdated (or corrupt)."""


class Publisher:
    """The last published state, the snapshot built from it, and the compiled-table caches."""

    def __init__(self, store: StateStore, ledger: HealthLedger, cache_size: Callable[[], int]) -> None:
        self.store = store
        self.cell = ServingCell()
        self.state = ControlState()
        self._ledger = ledger
        self._cache_size = cache_size
        # At most kept_compiled(state) (plus one being adopted). Copy-on-write: writers (under the
        # manager's lock) assign a new dict, so base_table, read outside the lock by prepare, iterates
        # a dict nobody changes.
        self._tables: dict[str, RuleTable] = {}
        self._salts: dict[str, Salt] = {}
        self.refuse_candidates: str | None = None  # why this process serves no candidate (see deployment/fleet.py)

    def publish(self, state: ControlState) -> None:
        """Build the snapshot for ``state`` and swap it in with one assignment.

        Raises :class:`BundleGone` (nothing published) when a serving version's bundle is missing.
        """
        stable = self._table_for(state, state.active) if state.active else None
        rollout = state.rollout if self.refuse_candidates is None else None  # refusing: all traffic on stable
        candidate = self._table_for(state, rollout.candidate) if rollout is not None else None
        salt = self._salt(rollout.salt, rollout.algorithm) if rollout is not None else None
        snapshot = ServingSnapshot.build(
            stable,
            candidate,
            salt,
            rollout.share_bp if rollout is not None else 0,
            stable_recorder=self._ledger.recorder(state.active) if state.active else None,
            candidate_recorder=self._ledger.recorder(rollout.candidate) if rollout is not None else None,
            revision=state.revision,
            targeting=targeting_of(state, stable, candidate),  # scope and pins (control/targeting.py)
        )
        self.cell.current = snapshot
        self.state = state
        keep = kept_compiled(state)
        # evicted, or neither serving nor next: compiled again if needed
        self._tables = {v: t for v, t in self._tables.items() if v in keep}
        self._ledger.forget_all_but(state.versions)
        self._salts = {k: v for k, v in self._salts.items() if rollout is not None and k == rollout.salt}

    def publish_latest(self, attempts: int = 20) -> ControlState:
        """Load the stored state and publish it, re-reading if it changes under us.

        The state and the bundles are separate reads: another process may evict a version's
        bundle between them, which only happens once the state read is outdated; read again.
        """
        for _ in range(attempts - 1):
            state = self.store.load()
            try:
                self.publish(state)
            except BundleGone:
                if self.store.revision() == state.revision:
                    raise
                continue
            return state
        state = self.store.load()
        self.publish(state)
        return state

    def adopt_table(self, version_id: str, base: RuleTable) -> None:
        """Keep the table compiled at prepare time for ``version_id`` (no recompile on publish).

        The kept copy holds no bundle: its ``bundle`` is re-read from the store on demand.
        """
        record = self.state.versions.get(version_id)
        if record is not None and version_id in kept_compiled(self.state) and version_id not in self._tables:
            self._tables = {**self._tables, version_id: base.restamped(version_id, load=self._loader(record))}

    def base_table(self, bundle: RuleBundle) -> RuleTable:
        """The compiled table of ``bundle`` without a version id (a kept table of the same digest is reused)."""
        for table in self._tables.values():  # a dict no writer changes (copy-on-write)
            if table.digest == bundle.digest:
                return table.restamped(None, bundle=bundle)
        return RuleTable.from_bundle(bundle)

    def bundle_of(self, version_id: str) -> RuleBundle:
        """The bundle a retained version was prepared from (re-read from the store, digest-checked)."""
        record = self.state.versions.get(version_id)
        bundle = load_checked_bundle(self.store, record) if record is not None else None
        if bundle is None:
            raise VersionNotFoundError(version_id)
        return bundle

    def compiled_versions(self) -> tuple[str, ...]:
        """The versions whose tables are compiled now (the others compile on demand)."""
        return tuple(self._tables)

    def serving(self) -> Serving:
        """What serves now, as hooks are told it."""
        return serving_of_snapshot(self.cell.current)

    def _table_for(self, state: ControlState, version_id: str) -> RuleTable:
        table = self._tables.get(version_id)
        if table is None:
            record = state.versions.get(version_id)
            with gc_paused():  # one young-generation sweep after it, over the table only (the bundle is freed)
                bundle = load_checked_bundle(self.store, record) if record is not None else None
                if bundle is None or record is None:
                    raise BundleGone(f"the store holds no bundle for {version_id!r}")
                table = RuleTable.from_bundle(bundle, version_id=version_id, load=self._loader(record))
                del bundle
            if version_id in kept_compiled(state):
                self._tables = {**self._tables, version_id: table}
        return table

    def _loader(self, record: VersionRecord) -> Callable[[], RuleBundle]:
        store = self.store

        def load() -> RuleBundle:
            bundle = load_checked_bundle(store, record)
            if bundle is None:
                raise VersionNotFoundError(record.version_id)
            return bundle

        return load

    def _salt(self, text: str, algorithm: int) -> Salt:
        salt = self._salts.get(text)
        if salt is None or salt.algorithm != algorithm:  # the rollout's own algorithm (docs/routing.md)
            salt = self._salts[text] = Salt.from_text(text, algorithm)
        return salt


def kept_compiled(state: ControlState) -> frozenset[str]:
    """The versions whose tables stay compiled: what serves, the rollback target, the newest staged one.

    At most four, whatever ``max_history`` is; the others are compiled again from the store when
    activated or rolled back to (see docs/performance.md for what that costs).
    """
    keep = {state.active, state.rollback_target}
    if state.rollout is not None:
        keep.update((state.rollout.candidate, state.rollout.stable))
    staged = [v for v, r in state.versions.items() if r.state is DeploymentState.STAGED]
    if staged:
        keep.add(max(staged, key=lambda v: state.versions[v].seq))
    return frozenset(v for v in keep if v is not None)


def serving_of_snapshot(snapshot: ServingSnapshot) -> Serving:
    """(stable, candidate, candidate percent) of a snapshot."""
    stable = snapshot.stable.version_id if snapshot.stable is not None else None
    candidate = snapshot.candidate.version_id if snapshot.candidate is not None else None
    return stable, candidate, snapshot.share_bp / 100 if candidate else 0.0


def serving_of_state(state: ControlState) -> Serving:
    """(stable, candidate, candidate percent) that ``state`` will serve once published."""
    rollout = state.rollout
    if rollout is None:
        return state.active, None, 0.0
    return state.active, rollout.candidate, rollout.share_bp / 100
