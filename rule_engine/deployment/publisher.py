"""Publisher: turns a stored :class:`ControlState` into the :class:`ServingSnapshot` readers see.

It owns the compiled tables (per version, and per bundle digest so a version prepared twice is
compiled once), the rollout salts, and the :class:`ServingCell` it publishes into with one
assignment. It is called under the manager's lock; readers never see it, only the cell.
"""

from __future__ import annotations

from collections.abc import Callable

from rule_engine.bundle.models import RuleBundle
from rule_engine.control.records import ControlState
from rule_engine.control.targeting import targeting_of
from rule_engine.errors import StoreError, VersionNotFoundError
from rule_engine.evaluation.table import RuleTable
from rule_engine.health.ledger import HealthLedger
from rule_engine.serving.routing import Salt
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import load_checked_bundle

__all__ = ["BundleGone", "Publisher", "Serving", "serving_of_snapshot", "serving_of_state"]

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
        self._tables: dict[str, RuleTable] = {}
        self._compiled: dict[str, RuleTable] = {}  # digest -> table without version id
        self._salts: dict[str, Salt] = {}
        self.refuse_candidates: str | None = None  # why this process serves no candidate (see deployment/fleet.py)

    def publish(self, state: ControlState) -> None:
        """Build the snapshot for ``state`` and swap it in with one assignment.

        Raises :class:`BundleGone` (nothing published) when a serving version's bundle is missing.
        """
        stable = self._table_for(state, state.active) if state.active else None
        rollout = state.rollout if self.refuse_candidates is None else None  # refusing: all traffic on stable
        candidate = self._table_for(state, rollout.candidate) if rollout is not None else None
        salt = self._salt(rollout.salt) if rollout is not None else None
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
        for version_id in [v for v in self._tables if v not in state.versions]:
            del self._tables[version_id]  # evicted from history: free the table
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
        """Keep the table compiled at prepare time for ``version_id`` (no recompile on publish)."""
        self._tables.setdefault(version_id, base.restamped(version_id))

    def base_table(self, bundle: RuleBundle) -> RuleTable:
        """The compiled table of ``bundle`` (cached by digest; without a version id)."""
        table = self._compiled.get(bundle.digest)
        if table is None:
            table = RuleTable.from_bundle(bundle)
            if len(self._compiled) >= max(self._cache_size(), 4) * 2:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[bundle.digest] = table
        return table

    def bundle_of(self, version_id: str) -> RuleBundle:
        """The bundle a retained version was prepared from (compiled copy, else the store's, digest-checked)."""
        table = self._tables.get(version_id)
        if table is not None:
            return table.bundle
        record = self.state.versions.get(version_id)
        bundle = load_checked_bundle(self.store, record) if record is not None else None
        if bundle is None:
            raise VersionNotFoundError(version_id)
        return bundle

    def serving(self) -> Serving:
        """What serves now, as hooks are told it."""
        return serving_of_snapshot(self.cell.current)

    def _table_for(self, state: ControlState, version_id: str) -> RuleTable:
        table = self._tables.get(version_id)
        if table is None:
            record = state.versions.get(version_id)
            bundle = load_checked_bundle(self.store, record) if record is not None else None
            if bundle is None:
                raise BundleGone(f"the store holds no bundle for {version_id!r}")
            table = self.base_table(bundle).restamped(version_id)
            self._tables[version_id] = table
        return table

    def _salt(self, text: str) -> Salt:
        salt = self._salts.get(text)
        if salt is None:
            salt = self._salts[text] = Salt.from_text(text)
        return salt


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
