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
from rule_engine.bundle.signing import TrustPolicy
from rule_engine.bundle.trusted import text_digest
from rule_engine.control.records import ControlState, Rollout, VersionRecord
from rule_engine.control.shadowing import in_shadow, shadow_options
from rule_engine.control.signatures import check_loaded
from rule_engine.control.states import DeploymentState
from rule_engine.control.targeting import targeting_of
from rule_engine.errors import StoreError, VersionNotFoundError
from rule_engine.evaluation.codecache import environment_cache
from rule_engine.evaluation.compiler import use_code_cache
from rule_engine.evaluation.table import RuleTable
from rule_engine.health.ledger import HealthLedger
from rule_engine.serving.decisionlog import Taps
from rule_engine.serving.routing import Salt
from rule_engine.serving.shadow import ShadowEvaluator
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import load_checked_bundle

__all__ = [
    "BundleGone",
    "Publisher",
    "Serving",
    "kept_compiled",
    "newest_staged",
    "serving_of_snapshot",
    "serving_of_state",
]

Serving = tuple[str | None, str | None, float]  # (stable, candidate, candidate percent)


class BundleGone(StoreError):
    """A version's bundle was not in the store: the state it came from was outdated (or corrupt)."""


class Publisher:
    """The last published state, the snapshot built from it, and the compiled-table caches."""

    def __init__(
        self,
        store: StateStore,
        ledger: HealthLedger,
        cache_size: Callable[[], int],
        trust: Callable[[], TrustPolicy | None] = lambda: None,
    ) -> None:
        self.store = store
        self._trust = trust  # this process's trust policy: checks signatures on load when the store requires them
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
        self.shadow: ShadowEvaluator | None = None  # the stored shadow phase's evaluator (control/shadowing.py)
        code_cache = environment_cache()  # RULE_ENGINE_CODE_CACHE: generated code shared on this host
        if code_cache is not None:
            use_code_cache(code_cache)

    def publish(self, state: ControlState) -> None:
        """Build the snapshot for ``state`` and swap it in with one assignment.

        Raises :class:`BundleGone` (nothing published) when a serving version's bundle is missing.
        """
        stable = self._table_for(state, state.active) if state.active else None
        rollout = state.rollout if self.refuse_candidates is None else None  # refusing: all traffic on stable
        candidate = self._table_for(state, rollout.candidate) if rollout is not None else None
        shadowed = candidate if in_shadow(rollout) else None  # decided in the shadow, served by nobody
        candidate = None if shadowed is not None else candidate
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
        self._follow_shadow(state, rollout, shadowed)
        self.cell.current = snapshot
        self.state = state
        keep = kept_compiled(state)
        # evicted, or neither serving nor next: compiled again if needed
        self._tables = {v: t for v, t in self._tables.items() if v in keep}
        self._ledger.forget_all_but(state.versions)
        self._salts = {k: v for k, v in self._salts.items() if rollout is not None and k == rollout.salt}

    def _follow_shadow(self, state: ControlState, rollout: Rollout | None, table: RuleTable | None) -> None:
        """Attach (or detach) the evaluator of the stored shadow phase: one per phase, started here.

        It replaces a shadow started by hand (``start_shadow``) while the phase lasts. Its counts go to
        the ledger's shadow bucket at every flush; once detached it is stopped (not joined: no wait).
        """
        record = state.versions.get(rollout.candidate) if rollout is not None and table is not None else None
        options = shadow_options(record.strategy) if record is not None else None
        current = self.shadow
        wanted = (record.version_id, options.sample_rate) if record is not None and options is not None else None
        if current is not None and (current.candidate.version_id, current.sample_rate) != wanted:
            taps = self.cell.taps
            if taps is not None and taps.shadow is current:
                self.cell.attach(Taps(taps.log, None))
            current.stop(timeout=0)
            self.shadow = current = None
        if current is None and options is not None and table is not None:
            taps = self.cell.taps
            log = taps.log if taps is not None else None
            shadow = ShadowEvaluator(table, sample_rate=options.sample_rate, log=log)
            shadow.start(owner=self)
            self._ledger.watch_shadow(shadow)
            self.cell.attach(Taps(log, shadow))
            self.shadow = shadow

    def stop_shadow(self) -> None:
        """Detach and stop the stored shadow phase's evaluator, if any (the manager's ``close``)."""
        self._follow_shadow(self.state, None, None)

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
        if record is not None and version_id not in self._tables:
            self.keep_table(version_id, base.restamped(version_id, load=self._loader(record)), self.state)

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
            table = self.compile_version(state, version_id)
            if version_id in kept_compiled(state):
                self._tables = {**self._tables, version_id: table}
        return table

    def staged_to_compile(self, state: ControlState) -> str | None:
        """The newest staged version of ``state`` when it is not compiled yet (it is kept once it is)."""
        staged = newest_staged(state)
        return staged if staged is not None and staged not in self._tables else None

    def compile_version(self, state: ControlState, version_id: str) -> RuleTable:
        """``version_id``'s table, not kept: a compiled table of the same digest restamped, else its stored
        bundle read, digest- and signature-checked and compiled.

        Safe outside the manager's lock (it reads the copy-on-write table map and the store only).
        Raises :class:`BundleGone` when the store holds no bundle for it, :class:`StoreError` when
        the bundle fails its checks.
        """
        record = state.versions.get(version_id)
        # compiled once per digest, unless signatures are required: each version's is then checked (D25)
        reusable = record is not None and not state.require_signatures
        table = self._same_digest(record) if reusable and record is not None else None
        if table is not None:
            return table
        with gc_paused():  # one young-generation sweep after it, over the table only (the bundle is freed)
            bundle = load_checked_bundle(self.store, record) if record is not None else None
            if bundle is None or record is None:
                raise BundleGone(f"the store holds no bundle for {version_id!r}")
            check_loaded(state, record, bundle, self._trust())  # D25: StoreError unless its signature verifies
            table = RuleTable.from_bundle(bundle, version_id=version_id, load=self._loader(record))
            del bundle
        return table

    def keep_table(self, version_id: str, table: RuleTable, compiled_for: ControlState) -> bool:
        """Keep ``table``, compiled by :meth:`compile_version` from ``compiled_for``, if the published
        state still keeps ``version_id`` compiled and it is not yet; True when kept (call under the lock).

        Refused when signatures became required since: the table may then come from a reused digest,
        not from its own checked signature.
        """
        state = self.state
        if version_id in self._tables or version_id not in kept_compiled(state):
            return False
        if state.require_signatures and not compiled_for.require_signatures:
            return False
        self._tables = {**self._tables, version_id: table}
        return True

    def _same_digest(self, record: VersionRecord) -> RuleTable | None:
        """A compiled table of another version with ``record``'s digest, restamped (compiled once per digest).

        Only when the store holds ``record``'s bundle with that digest (read and hashed, not parsed):
        a missing or changed bundle takes the usual path, which reports it.
        """
        same = next((t for t in self._tables.values() if t.digest == record.digest), None)
        if same is None:
            return None
        text = self.store.bundle_json(record.version_id)
        if not isinstance(text, str) or text_digest(text) != record.digest:
            return None
        return same.restamped(record.version_id, load=self._loader(record))

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
    keep = {state.active, state.rollback_target, newest_staged(state)}
    if state.rollout is not None:
        keep.update((state.rollout.candidate, state.rollout.stable))
    return frozenset(v for v in keep if v is not None)


def newest_staged(state: ControlState) -> str | None:
    """The staged version prepared last, or None."""
    staged = [v for v, r in state.versions.items() if r.state is DeploymentState.STAGED]
    return max(staged, key=lambda v: state.versions[v].seq) if staged else None


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
