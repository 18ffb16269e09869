"""DeploymentManager: stage bundles, move traffic between versions, roll back, keep history.

Two planes. Readers (:meth:`DeploymentManager.get_active_table`, :meth:`~DeploymentManager.route_and_get_table`,
:class:`~rule_engine.RuleEngine`) read one immutable :class:`ServingSnapshot` with one attribute
access and never lock. Writers (prepare, activate, advance, promote, rollback, conclude, tick) are
serialized by one lock and follow one order: plan the change from the stored state (validating
everything, raising before anything changes), run before-swap hooks, commit it to the store against
the revision it was planned from, publish the new snapshot in one assignment, emit the log events,
and, once the lock is released, run after-swap and on-rollback hooks.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mmh3
import structlog

from rule_engine.bundle.models import RuleBundle, canonical_json, load_bundle, parse_bundle
from rule_engine.bundle.signing import Signature, TrustPolicy, signature_beside
from rule_engine.clock import Clock, SystemClock, iso
from rule_engine.control import transitions as control
from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.status import DeploymentInfo, RolloutStatus, TickReport, VersionId, info_of
from rule_engine.control.strategies import ABTest, BlueGreen, Canary, Scheduled, Strategy
from rule_engine.control.transitions import Change
from rule_engine.deployment.background import BackgroundLoop
from rule_engine.deployment.hooks import DeploymentEvent, Hook, HookPoint, Hooks
from rule_engine.errors import (
    ConflictError,
    InvalidTransitionError,
    RuleEngineError,
    StoreError,
    VersionNotFoundError,
)
from rule_engine.evaluation.selftest import run_bundle_tests
from rule_engine.evaluation.table import RuleTable
from rule_engine.health.ledger import HealthLedger
from rule_engine.health.report import ExperimentReport, build_experiment_report
from rule_engine.health.thresholds import HealthMetrics, HealthThresholds
from rule_engine.health.verdict import Verdict
from rule_engine.serving.counts import HealthCounts
from rule_engine.serving.routing import Salt, compute_request_hash
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.stores.base import StateStore, open_store, store_url_from_env
from rule_engine.stores.memory import MemoryStore

__all__ = ["DeploymentInfo", "DeploymentManager", "RolloutStatus", "TickReport", "VersionId"]

_MASK64 = (1 << 64) - 1
_log = structlog.get_logger("rule_engine")
S = DeploymentState
BundleSource = RuleBundle | Mapping[str, Any] | str | bytes | os.PathLike[str]


class DeploymentManager:
    """Prepares versions, rolls them out by strategy, watches health, rolls back, keeps history.

    A plain ``DeploymentManager()`` keeps its state in memory. :meth:`open` keeps it in a store
    (SQLite) shared by processes, and follows changes other processes commit.
    """

    def __init__(
        self,
        max_history: int = 10,
        thresholds: HealthThresholds | None = None,
        auto_rollback: bool = False,
        *,
        store: StateStore | None = None,
        clock: Clock | None = None,
        evaluation_deadline_us: float = 50_000.0,
        max_commit_retries: int = 20,
        trust: TrustPolicy | None = None,
    ) -> None:
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.max_history = max_history
        self.auto_rollback = auto_rollback
        self._store: StateStore = store if store is not None else MemoryStore()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_retries = max_commit_retries
        self.trust = trust  # when set, prepare_deployment refuses bundles without a trusted signature
        self._lock = threading.RLock()
        self._hooks = Hooks()
        self._cell = ServingCell()
        self._state = ControlState()
        self._tables: dict[str, RuleTable] = {}
        self._compiled: dict[str, RuleTable] = {}  # digest -> table without version id
        self._salts: dict[str, Salt] = {}
        self._threads: list[BackgroundLoop] = []
        self._stale_reason: str | None = None
        self._health = HealthLedger(
            self._store, thresholds if thresholds is not None else HealthThresholds(), evaluation_deadline_us
        )
        self._refresh()

    # --- construction and lifetime ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        follow: bool = True,
        poll_interval: float = 0.02,
        **kwargs: Any,
    ) -> DeploymentManager:
        """A manager on the store at ``url`` (else ``$RULE_ENGINE_STORE``, else ``sqlite:///.rule-engine/state.db``).

        With ``follow`` (the default) a background thread picks up changes committed by other
        processes within ``poll_interval`` and flushes this process's health counters.
        """
        store = open_store(store_url_from_env(url))
        try:
            manager = cls(store=store, **kwargs)
        except BaseException:
            store.close()
            raise
        if follow:
            manager.start_following(poll_interval=poll_interval)
        return manager

    def close(self) -> None:
        """Stop background threads, flush health counters and close the store."""
        for loop in list(self._threads):
            loop.stop()
        self._threads.clear()
        with self._lock:
            with contextlib.suppress(StoreError):
                self._health.flush(self._clock.now())
            self._store.close()

    def __enter__(self) -> DeploymentManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def thresholds(self) -> HealthThresholds:
        """When a version counts as unhealthy (see :class:`HealthThresholds`)."""
        return self._health.thresholds

    @thresholds.setter
    def thresholds(self, thresholds: HealthThresholds) -> None:
        self._health.thresholds = thresholds

    @property
    def evaluation_deadline_us(self) -> float:
        """An evaluation slower than this counts as a timeout (for versions that start serving after a change)."""
        return self._health.deadline_us

    @evaluation_deadline_us.setter
    def evaluation_deadline_us(self, deadline_us: float) -> None:
        self._health.deadline_us = deadline_us

    @property
    def store(self) -> StateStore:
        """The state store."""
        return self._store

    # --- data plane: lock-free reads of one snapshot ------------------------------------------------

    def get_active_table(self) -> RuleTable | None:
        """The stable table (serving all traffic outside a rollout); None before any activation."""
        return self._cell.current.stable

    def route_and_get_table(self, request_hash: int) -> RuleTable | None:
        """The table serving a request with this hash (see :func:`compute_request_hash`)."""
        snapshot = self._cell.current
        candidate = snapshot.candidate
        if candidate is not None and (snapshot.multiplier * request_hash + snapshot.offset) & _MASK64 < snapshot.limit:
            return candidate
        return snapshot.stable

    def route(self, key: str) -> RuleTable | None:
        """The table serving a request with routing key ``key`` (hashed once)."""
        snapshot = self._cell.current
        candidate = snapshot.candidate
        if candidate is not None:
            # compute_request_hash(key), inlined for the common str key (one C call, no varargs).
            request_hash = mmh3.hash(key, 0, False) if type(key) is str else compute_request_hash(key)
            if (snapshot.multiplier * request_hash + snapshot.offset) & _MASK64 < snapshot.limit:
                return candidate
        return snapshot.stable

    @staticmethod
    def compute_request_hash(*parts: object) -> int:
        """The request hash of a routing key (see :func:`rule_engine.compute_request_hash`)."""
        return compute_request_hash(*parts)

    @property
    def serving_cell(self) -> ServingCell:
        """The cell this manager publishes its serving snapshot into (what :class:`RuleEngine` reads)."""
        return self._cell

    @property
    def snapshot(self) -> ServingSnapshot:
        """What serves now (immutable)."""
        return self._cell.current

    def get_active_version_id(self) -> VersionId | None:
        """The id of the stable version, or None before any activation."""
        table = self._cell.current.stable
        return table.version_id if table is not None else None

    # --- control plane: operations ------------------------------------------------------------------

    def prepare_deployment(
        self,
        bundle: BundleSource,
        strategy: Strategy | None = None,
        deployed_by: str = "unknown",
        *,
        signature: Signature | None = None,
    ) -> VersionId:
        """Validate a bundle, run its tests, compile it, and stage it as a new version.

        ``bundle`` is a :class:`RuleBundle`, a mapping, JSON text, or a path. Nothing served
        changes. Raises :class:`BundleValidationError` / :class:`BundleTestFailure` and leaves no
        trace when the bundle is not fit to serve. With a ``trust`` policy, a bundle without a trusted
        ``signature`` (default: the ``BUNDLE.sig`` next to a bundle file) is refused with
        :class:`BundleTrustError` before its tests run or anything is compiled or stored.
        """
        validated = _coerce_bundle(bundle)
        if self.trust is not None:
            self.trust.verify(validated, signature if signature is not None else signature_beside(bundle))
        chosen = strategy if strategy is not None else BlueGreen()
        if not isinstance(chosen, BlueGreen | Canary | ABTest | Scheduled):
            raise TypeError(f"strategy must be BlueGreen, Canary, ABTest or Scheduled, got {chosen!r}")
        base = self._base_table(validated)
        run_bundle_tests(validated, base)
        bundle_json = canonical_json(validated)
        actor = deployed_by or "unknown"

        def plan(state: ControlState, now: float) -> Change:
            seq = state.next_seq
            version_id = f"{validated.bundle_id}@{validated.version}+{validated.digest[:8]}.{seq}"
            record = VersionRecord(
                version_id=version_id,
                seq=seq,
                bundle_id=validated.bundle_id,
                bundle_version=validated.version,
                digest=validated.digest,
                deployed_by=actor,
                strategy=chosen,
                state=S.STAGED,
                created_at=now,
                updated_at=now,
            )
            return control.prepare(state, record, bundle_json, now, self.max_history)

        change = self._apply(plan, "prepare", actor)
        version_id: str = change.result
        with self._lock:
            self._tables.setdefault(version_id, base.restamped(version_id))
        return version_id

    def activate_deployment(self, version_id: VersionId, *, actor: str = "unknown", supersede: bool = False) -> None:
        """Start serving a staged version by its strategy.

        Refused while a rollout or A/B test is in progress (:class:`RolloutInProgressError`) unless
        ``supersede=True``, which rolls the one in progress back first (as Argo Rollouts aborts an
        update superseded by a newer one). A scheduled version refuses before its time.
        """
        self._apply(
            lambda state, now: control.activate(
                state, version_id, now, actor, supersede=supersede, max_history=self.max_history
            ),
            "activate",
            actor,
            version_id,
        )

    def advance_rollout(self, *, actor: str = "unknown") -> bool:
        """Move the canary to its next stage if the current one has lasted ``stage_duration_secs``.

        Returns False (and changes nothing) when the stage is not yet due, or the candidate is
        unhealthy. A candidate with no verdict yet may be advanced by this explicit call (``tick()``
        waits for a healthy verdict). Reaching 100% completes the rollout.
        """
        healthy = self._candidate_verdict().healthy
        change = self._apply(
            lambda state, now: control.advance(state, now, actor, healthy=healthy, max_history=self.max_history),
            "advance",
            actor,
        )
        return bool(change.result)

    def promote(self, *, actor: str = "unknown") -> VersionId:
        """Finish the canary now: the candidate takes all traffic. Returns it."""
        change = self._apply(
            lambda state, now: control.promote(state, now, actor, max_history=self.max_history),
            "promote",
            actor,
        )
        return str(change.result)

    def conclude_experiment(self, winner_version_id: VersionId, *, actor: str = "unknown") -> VersionId:
        """End the A/B test: ``winner_version_id`` (A or B) serves all traffic. Returns it."""
        change = self._apply(
            lambda state, now: control.conclude(state, winner_version_id, now, actor, max_history=self.max_history),
            "conclude",
            actor,
            winner_version_id,
        )
        return str(change.result)

    def rollback(self, *, actor: str = "unknown", reason: str = "manual rollback") -> VersionId:
        """Return traffic to the stable version (during a rollout) or the previous version.

        Returns the version now serving. Raises :class:`NoPreviousVersionError` when there is none.
        """
        change = self._apply(lambda state, now: control.rollback(state, now, actor, reason=reason), "rollback", actor)
        return str(change.result)

    # --- health ---------------------------------------------------------------------------------------

    def update_health_metrics(
        self,
        version_id: VersionId,
        evaluations: int,
        errors: int = 0,
        timeouts: int = 0,
        avg_latency_us: float = 0.0,
    ) -> bool | None:
        """Add figures an evaluator measured itself. The figures are **deltas** since its last report.

        Judges the version at once; with ``auto_rollback`` an unhealthy candidate (or newly active
        version) is rolled back before this returns. Returns the verdict (True / False / None).
        """
        for name, value in (
            ("evaluations", evaluations),
            ("errors", errors),
            ("timeouts", timeouts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if errors > evaluations or timeouts > evaluations:
            raise ValueError("errors and timeouts cannot exceed evaluations")
        if not math.isfinite(avg_latency_us) or avg_latency_us < 0:
            raise ValueError(f"avg_latency_us must be a finite number >= 0, got {avg_latency_us!r}")
        with self._lock:
            self._require_version(version_id)
            now = self._clock.now()
            delta = HealthCounts(evaluations, errors, timeouts, avg_latency_us * evaluations)
            self._health.add(version_id, delta, now)
        self._judge_and_act()
        return self.get_health_status(version_id)

    def get_health_status(self, version_id: VersionId) -> bool | None:
        """The verdict on a version over the recent window: True, False, or None (no verdict yet)."""
        return self.health_verdict(version_id).healthy

    def health_verdict(self, version_id: VersionId) -> Verdict:
        """The verdict on a version with its reason."""
        with self._lock:
            self._require_version(version_id)
            now = self._clock.now()
            self._health.flush(now)
            return self._verdict_of(version_id, now)

    def get_experiment_report(self) -> ExperimentReport:
        """Per-variant figures of the A/B test in progress, with a significance test on error rates."""
        with self._lock:
            now = self._clock.now()
            self._health.flush(now)
            rollout = self._state.rollout
            if rollout is None or rollout.kind != "ab-test":
                raise InvalidTransitionError("no A/B test is in progress")
            counts = self._health.since([rollout.stable, rollout.candidate], rollout.started_at)
            return build_experiment_report(rollout, counts[rollout.stable], counts[rollout.candidate], now)

    # --- the controller ---------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Do all time-driven work once: scheduled activations, A/B test ends, health, canary stages.

        Safe to call from several processes at once: each step is planned from the stored state and
        committed against its revision, so it happens exactly once.
        """
        actions: list[str] = []
        holding: list[str] = []
        for record in control.scheduled_due(self._state, self._clock.now()):
            if self._state.rollout is not None:
                in_progress = self._state.rollout.candidate
                holding.append(f"{record.version_id}: scheduled, waiting for the rollout of {in_progress}")
                continue
            change = self._apply(self._plan_scheduled(record.version_id), "activate", "controller", record.version_id)
            if change.audit:
                actions.append(f"activated scheduled {record.version_id}")
        change = self._apply(_plan_end_experiment, "end-experiment", "controller")
        if change.events:
            actions.append("ended A/B test")
        actions.extend(self._judge_and_act())
        with self._lock:
            self._health.prune(self._clock.now(), self._state.rollout)
        rollout = self._state.rollout
        if rollout is not None and rollout.kind == "canary":
            if self._candidate_verdict().healthy is True and rollout.held is None:
                change = self._apply(self._plan_advance(rollout.candidate), "advance", "controller")
                if change.result:
                    actions.append(f"advanced {rollout.candidate}")
            status = self.get_rollout_status()
            if status is not None and status.holding:
                holding.append(f"{rollout.candidate}: {status.holding}")
        return TickReport(tuple(actions), tuple(holding))

    def _plan_scheduled(self, version_id: str) -> Callable[[ControlState, float], Change]:
        def plan(state: ControlState, now: float) -> Change:
            if not _still_due(state, version_id, now):  # another process activated it first
                return _nothing_to_do(state)
            return control.activate(state, version_id, now, "controller", max_history=self.max_history)

        return plan

    def _plan_hold(self, candidate: str, reason: str) -> Callable[[ControlState, float], Change]:
        def plan(state: ControlState, now: float) -> Change:
            return control.hold(state, now, "controller", candidate=candidate, reason=reason)

        return plan

    def _plan_advance(self, candidate: str) -> Callable[[ControlState, float], Change]:
        def plan(state: ControlState, now: float) -> Change:
            if state.rollout is None or state.rollout.candidate != candidate:
                return _nothing_to_do(state)
            return control.advance(state, now, "controller", healthy=True, max_history=self.max_history)

        return plan

    def start_controller(self, interval: float = 1.0) -> BackgroundLoop:
        """Run :meth:`tick` every ``interval`` seconds on one background thread until stopped.

        Returns a handle with ``stop()``; also a context manager (``with manager.start_controller():``).
        """
        loop = BackgroundLoop("rule-engine-controller", interval, self._controller_step)
        self._threads.append(loop)
        loop.start()
        return loop

    def start_following(self, poll_interval: float = 0.02, flush_interval: float = 1.0) -> BackgroundLoop:
        """Pick up changes other processes commit to the store, and flush health counters, in the background."""
        state = {"last_flush": self._clock.now()}

        def step() -> None:
            self._follow_once()
            now = self._clock.now()
            if now - state["last_flush"] >= flush_interval:
                state["last_flush"] = now
                with self._lock:
                    self._health.flush(now)

        loop = BackgroundLoop("rule-engine-follower", poll_interval, step)
        self._threads.append(loop)
        loop.start()
        return loop

    @property
    def stale(self) -> str | None:
        """Why this manager may be serving an old state (the store is unavailable), or None."""
        return self._stale_reason

    def refresh(self) -> bool:
        """Load the stored state now if another process changed it; True when something changed."""
        return self._follow_once()

    # --- reads ----------------------------------------------------------------------------------------

    def get_deployment_info(self, version_id: VersionId) -> DeploymentInfo | None:
        """Everything about a version, or None if it is unknown (or evicted from history)."""
        with self._lock:
            record = self._state.versions.get(version_id)
            if record is None:
                return None
            now = self._clock.now()
            self._health.flush(now)
            lifetime = self._health.lifetime(version_id)
            window = self._health.window([version_id], now)[version_id]
            verdict = self._verdict_of(version_id, now)
            metrics = HealthMetrics.of(lifetime, window, verdict, self._health.last_check(version_id))
            return info_of(record, self._state, metrics)

    def get_deployment_history(self) -> list[VersionId]:
        """The versions kept in history, oldest first (at most ``max_history``, plus protected ones)."""
        return list(self._state.versions)

    def get_rollout_status(self) -> RolloutStatus | None:
        """The rollout or A/B test in progress, and why it holds; None when there is none."""
        with self._lock:
            rollout = self._state.rollout
            if rollout is None:
                return None
            now = self._clock.now()
            self._health.flush(now)
            record = self._state.versions[rollout.candidate]
            strategy = record.strategy
            verdict = self._candidate_verdict(now)
            stages: tuple[float, ...] = ()
            next_at: float | None = None
            holding: str | None = None
            if isinstance(strategy, Canary):
                stages = strategy.stages
                next_at = rollout.stage_started_at + strategy.stage_duration_secs
                if verdict.healthy is False:
                    holding = f"unhealthy: {verdict.reason}" + ("" if self.auto_rollback else "; waiting for a person")
                elif rollout.held is not None:
                    holding = f"was unhealthy: {rollout.held}; waiting for a person"
                elif verdict.healthy is None:
                    holding = verdict.reason
                elif now < next_at:
                    holding = f"stage lasts until {iso(next_at)}"
            else:
                duration = getattr(strategy, "test_duration_secs", 0.0)
                next_at = rollout.started_at + duration
                if rollout.ended_at is not None:
                    holding = "test ended; waiting for conclude_experiment(winner)"
                elif verdict.healthy is False:
                    holding = f"unhealthy: {verdict.reason}"
            return RolloutStatus(
                version_id=rollout.candidate,
                stable_version_id=rollout.stable,
                strategy=strategy.kind,
                state=record.state,
                percentage=rollout.share_bp / 100,
                stage=rollout.stage_index + 1,
                stages=stages,
                stage_started_at=rollout.stage_started_at,
                next_step_at=next_at,
                ended_at=rollout.ended_at,
                verdict=verdict,
                holding=holding,
            )

    def audit_log(self, version_id: VersionId | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail (every transition: who, when, from/to state, why), oldest first."""
        return self._store.audit_log(version_id, limit)

    def bundle_of(self, version_id: VersionId) -> RuleBundle:
        """The bundle a retained version was prepared from."""
        with self._lock:
            self._require_version(version_id)
            table = self._tables.get(version_id)
            if table is not None:
                return table.bundle
            text = self._store.bundle_json(version_id)
            if text is None:
                raise VersionNotFoundError(version_id)
            return parse_bundle(text)

    def subscribe(self, point: HookPoint | str, hook: Hook) -> Callable[[], None]:
        """Call ``hook`` at ``point`` (before_swap, after_swap, on_error, on_rollback); returns an unsubscriber."""
        return self._hooks.subscribe(point, hook)

    # --- internals --------------------------------------------------------------------------------------

    def _apply(
        self,
        plan: Callable[[ControlState, float], Change],
        action: str,
        actor: str,
        version_id: str | None = None,
    ) -> Change:
        """Plan, commit (retrying on conflicts with other processes), publish, log; then after-hooks."""
        try:
            with self._lock:
                for attempt in range(self._max_retries):
                    state = self._store.load()
                    if state.revision != self._state.revision:
                        try:
                            self._publish(state)
                        except _BundleGone:
                            continue  # that state is already outdated: read it again
                    now = self._clock.now()
                    change = plan(state, now)
                    if change.state is state:
                        return change
                    before = _serving(self._cell.current)
                    if change.serving_changed:
                        self._hooks.run(
                            HookPoint.BEFORE_SWAP,
                            self._event(change, before, _serving_of(change.state)),
                        )
                    try:
                        committed = self._store.commit(
                            state.revision,
                            change.state,
                            bundles=change.bundles,
                            audit=change.audit,
                            evicted=change.evicted,
                        )
                    except ConflictError:
                        if attempt + 1 == self._max_retries:
                            raise
                        continue
                    change.state = committed
                    self._health.keep_evicted(change.evicted, now)
                    self._publish(committed)
                    for name, fields in change.events:
                        _log.info(name, **fields)
                    break
        except RuleEngineError as exc:
            self._hooks.run(
                HookPoint.ON_ERROR,
                DeploymentEvent(
                    action,
                    version_id,
                    actor,
                    _serving(self._cell.current),
                    _serving(self._cell.current),
                    str(exc),
                    exc,
                ),
            )
            raise
        after = _serving(self._cell.current)
        if change.serving_changed:
            self._hooks.run(HookPoint.AFTER_SWAP, self._event(change, before, after))
        if change.rolled_back is not None:
            event = self._event(change, before, after)
            self._hooks.run(HookPoint.ON_ROLLBACK, event)
        return change

    def _event(
        self,
        change: Change,
        before: tuple[str | None, str | None, float],
        after: tuple[str | None, str | None, float],
    ) -> DeploymentEvent:
        version_id = change.audit[0].version_id if change.audit else None
        reason = change.audit[-1].reason if change.audit else ""
        automatic = any(fields.get("trigger") == "automatic" for _, fields in change.events)
        return DeploymentEvent(change.action, version_id, change.actor, before, after, reason, None, automatic)

    def _refresh(self) -> None:
        with self._lock:
            self._publish_latest()

    def _publish_latest(self, attempts: int = 20) -> ControlState:
        """Load the stored state and publish it, re-reading if it changes under us.

        The state and the bundles are separate reads: another process may evict a version's
        bundle between them, which only happens once the state read is outdated; read again.
        """
        for _ in range(attempts - 1):
            state = self._store.load()
            try:
                self._publish(state)
            except _BundleGone:
                if self._store.revision() == state.revision:
                    raise
                continue
            return state
        state = self._store.load()
        self._publish(state)
        return state

    def _follow_once(self) -> bool:
        try:
            revision = self._store.revision()
            if revision == self._state.revision:
                if self._stale_reason is not None:
                    _log.info("follower.recovered", revision=revision)
                    self._stale_reason = None
                return False
            with self._lock:
                if self._store.revision() == self._state.revision:
                    return False
                self._publish_latest()
        except (RuleEngineError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self._stale_reason is None:
                _log.warning("follower.stale", error=reason, revision=self._state.revision)
            self._stale_reason = reason
            return False
        if self._stale_reason is not None:
            _log.info("follower.recovered", revision=self._state.revision)
        self._stale_reason = None
        _log.debug("follower.updated", revision=self._state.revision, active_version_id=self._state.active)
        return True

    def _publish(self, state: ControlState) -> None:
        """Build the snapshot for ``state`` and swap it in with one assignment."""
        stable = self._table_for(state.active) if state.active else None
        rollout = state.rollout
        candidate = self._table_for(rollout.candidate) if rollout is not None else None
        salt = self._salt(rollout.salt) if rollout is not None else None
        snapshot = ServingSnapshot.build(
            stable,
            candidate,
            salt,
            rollout.share_bp if rollout is not None else 0,
            stable_recorder=self._health.recorder(state.active) if state.active else None,
            candidate_recorder=self._health.recorder(rollout.candidate) if rollout is not None else None,
            revision=state.revision,
        )
        self._cell.current = snapshot
        self._state = state
        for version_id in [v for v in self._tables if v not in state.versions]:
            del self._tables[version_id]  # evicted from history: free the table
        self._health.forget_all_but(state.versions)
        self._salts = {k: v for k, v in self._salts.items() if rollout is not None and k == rollout.salt}

    def _table_for(self, version_id: str) -> RuleTable:
        table = self._tables.get(version_id)
        if table is None:
            text = self._store.bundle_json(version_id)
            if text is None:
                raise _BundleGone(f"the store holds no bundle for {version_id!r}")
            bundle = parse_bundle(text)
            table = self._base_table(bundle).restamped(version_id)
            self._tables[version_id] = table
        return table

    def _base_table(self, bundle: RuleBundle) -> RuleTable:
        table = self._compiled.get(bundle.digest)
        if table is None:
            table = RuleTable.from_bundle(bundle)
            if len(self._compiled) >= max(self.max_history, 4) * 2:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[bundle.digest] = table
        return table

    def _salt(self, text: str) -> Salt:
        salt = self._salts.get(text)
        if salt is None:
            salt = self._salts[text] = Salt.from_text(text)
        return salt

    def _require_version(self, version_id: str) -> VersionRecord:
        record = self._state.versions.get(version_id)
        if record is None:
            raise VersionNotFoundError(version_id, list(self._state.versions)[-5:])
        return record

    def _verdict_of(self, version_id: str, now: float) -> Verdict:
        return self._health.verdict(self._state, version_id, now, auto_rollback=self.auto_rollback)

    def _candidate_verdict(self, now: float | None = None) -> Verdict:
        with self._lock:
            rollout = self._state.rollout
            if rollout is None:
                return Verdict(None, "no rollout in progress")
            now = self._clock.now() if now is None else now
            self._health.flush(now)
            return self._verdict_of(rollout.candidate, now)

    def _judge_and_act(self) -> list[str]:
        """Judge the candidate and a newly active version; roll back the unhealthy when automatic."""
        actions: list[str] = []
        with self._lock:
            now = self._clock.now()
            self._health.flush(now)
            state = self._state
            suspects: list[tuple[str, str]] = []
            if state.rollout is not None:
                suspects.append(("candidate", state.rollout.candidate))
            elif state.active is not None and self._health.baking(state, now):
                suspects.append(("active", state.active))
            verdicts = [(role, vid, self._verdict_of(vid, now)) for role, vid in suspects]
        for role, version_id, verdict in verdicts:
            if verdict.healthy is not False:
                continue
            reason = verdict.reason
            if not self.auto_rollback:
                if role == "candidate":
                    held = self._apply(self._plan_hold(version_id, reason), "hold", "controller", version_id)
                    if held.audit:
                        actions.append(f"held {version_id} for a person: {reason}")
                continue

            def plan(
                state: ControlState,
                now: float,
                vid: str = version_id,
                role: str = role,
                why: str = reason,
            ) -> Change:
                still = (
                    (state.rollout is not None and state.rollout.candidate == vid)
                    if role == "candidate"
                    else (state.rollout is None and state.active == vid and state.rollback_target is not None)
                )
                if not still:
                    return _nothing_to_do(state)
                return control.rollback(state, now, "controller", reason=why, automatic=True)

            change = self._apply(plan, "rollback", "controller", version_id)
            if change.audit:
                _log.warning(
                    "rollback.automatic",
                    version_id=version_id,
                    reason=reason,
                    serving_version_id=change.result,
                )
                actions.append(f"rolled back {version_id}: {reason}")
        return actions

    def _controller_step(self) -> None:
        try:
            self.tick()
        except Exception as exc:
            _log.error("controller.tick_failed", error=f"{type(exc).__name__}: {exc}")


def _nothing_to_do(state: ControlState) -> Change:
    """A plan that changes nothing (the step was done already, maybe by another process)."""
    return Change(state, "noop", "controller")


def _plan_end_experiment(state: ControlState, now: float) -> Change:
    return control.end_experiment(state, now, "controller") or _nothing_to_do(state)


def _still_due(state: ControlState, version_id: str, now: float) -> bool:
    return state.rollout is None and any(r.version_id == version_id for r in control.scheduled_due(state, now))


def _serving(snapshot: ServingSnapshot) -> tuple[str | None, str | None, float]:
    stable = snapshot.stable.version_id if snapshot.stable is not None else None
    candidate = snapshot.candidate.version_id if snapshot.candidate is not None else None
    return stable, candidate, snapshot.share_bp / 100 if candidate else 0.0


def _serving_of(state: ControlState) -> tuple[str | None, str | None, float]:
    rollout = state.rollout
    if rollout is None:
        return state.active, None, 0.0
    return state.active, rollout.candidate, rollout.share_bp / 100


def _coerce_bundle(bundle: BundleSource) -> RuleBundle:
    if isinstance(bundle, RuleBundle):
        return bundle
    if isinstance(bundle, Mapping):
        return parse_bundle(json.dumps(bundle, allow_nan=True))
    if isinstance(bundle, bytes):
        return parse_bundle(bundle)
    if isinstance(bundle, str) and bundle.lstrip().startswith("{"):
        return parse_bundle(bundle)
    if isinstance(bundle, str | os.PathLike):
        return load_bundle(Path(bundle))
    raise TypeError(f"expected a RuleBundle, a mapping, JSON text or a path, got {type(bundle).__name__}")


class _BundleGone(StoreError):
    """A version's bundle was not in the store: the state it came from was outdated (or corrupt)."""
