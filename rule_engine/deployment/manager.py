"""DeploymentManager: the facade over staging, rollout, health, history and following a store.

Two planes. Readers (:meth:`~DeploymentManager.get_active_table`, :meth:`~DeploymentManager.route`,
:class:`~rule_engine.RuleEngine`) read one immutable :class:`ServingSnapshot` from a
:class:`ServingCell` and never lock. Writers are serialized by one lock and all take the path in
:mod:`rule_engine.deployment.commit`. The work itself lives in small collaborators: intake (validate,
trust, compile, self-test), the committer, the publisher (state -> snapshot, table caches), the
controller (tick, holds, automatic rollback) and the follower.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from rule_engine.bundle.models import RuleBundle
from rule_engine.bundle.signing import Signature, TrustPolicy
from rule_engine.clock import Clock, SystemClock
from rule_engine.control import transitions as control
from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.status import DeploymentInfo, RolloutStatus, TickReport, VersionId
from rule_engine.control.strategies import Strategy
from rule_engine.deployment.background import BackgroundLoop
from rule_engine.deployment.commit import Committer
from rule_engine.deployment.config import DeploymentConfig
from rule_engine.deployment.controller import Controller
from rule_engine.deployment.follower import Follower, follow_loop
from rule_engine.deployment.hooks import Hook, HookPoint, Hooks
from rule_engine.deployment.intake import BundleSource, stage
from rule_engine.deployment.publisher import Publisher
from rule_engine.errors import StoreError, VersionNotFoundError
from rule_engine.evaluation.table import RuleTable
from rule_engine.health.ledger import HealthLedger
from rule_engine.health.report import ExperimentReport
from rule_engine.health.thresholds import HealthThresholds
from rule_engine.health.verdict import Verdict
from rule_engine.serving.routing import compute_request_hash, goes_to_candidate
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.stores.base import StateStore, open_store, store_url_from_env
from rule_engine.stores.memory import MemoryStore

__all__ = ["DeploymentManager"]


class DeploymentManager:
    """Prepares versions, rolls them out by strategy, watches health, rolls back, keeps history.

    A plain ``DeploymentManager()`` keeps its state in memory. :meth:`open` keeps it in a store
    (SQLite) shared by processes and follows what they commit. The constructor does no I/O: a
    manager built on a store that already holds state serves it after :meth:`refresh` (``open`` does it).
    Settings are one immutable :class:`DeploymentConfig` (``config=``, or the keyword arguments).
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
        config: DeploymentConfig | None = None,
    ) -> None:
        settings = (max_history, thresholds or HealthThresholds(), auto_rollback, evaluation_deadline_us)
        self._config = config or DeploymentConfig(*settings, max_commit_retries, trust)
        self._store: StateStore = store if store is not None else MemoryStore()
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.RLock()
        self._hooks = Hooks()
        self._threads: list[BackgroundLoop] = []
        self._health = HealthLedger(self._store, self._config.thresholds, self._config.evaluation_deadline_us)
        self._publisher = Publisher(self._store, self._health, lambda: self._config.max_history)
        self._cell = self._publisher.cell  # what the data-plane reads below take, once per call
        self._committer = Committer(
            self._lock, self._clock, self._hooks, self._publisher, self._health, lambda: self._config.max_commit_retries
        )
        self._controller = Controller(self._committer, self._publisher, self._health, self._clock, lambda: self._config)
        self._follower = Follower(self._lock, self._publisher, self._hooks)

    # --- construction, lifetime, settings -----------------------------------------------------------

    @classmethod
    def open(
        cls, url: str | None = None, *, follow: bool = True, create: bool = True, **kwargs: Any
    ) -> DeploymentManager:
        """A manager on the store at ``url`` (else ``$RULE_ENGINE_STORE``, else ``sqlite:///.rule-engine/state.db``).

        Loads the stored state (``create=False``: a missing store is a :class:`StoreError`, not a new one);
        with ``follow`` (the default) a background thread picks up changes other processes commit within
        ``poll_interval`` seconds (a keyword, default 0.02) and flushes this process's health counters.
        """
        poll_interval = kwargs.pop("poll_interval", 0.02)
        store = url if isinstance(url, StateStore) else open_store(store_url_from_env(url), create=create)
        try:
            manager = cls(store=store, **kwargs)
            manager._follower.load()
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
    def config(self) -> DeploymentConfig:
        """The settings in force (immutable; change them with :meth:`configure`)."""
        return self._config

    def configure(self, **changes: Any) -> DeploymentConfig:
        """Change settings (names of :class:`DeploymentConfig`); each applies as its field documents. Returns the new config."""
        with self._lock:
            self._config = self._config.with_changes(**changes)
            self._health.thresholds = self._config.thresholds
            self._health.deadline_us = self._config.evaluation_deadline_us
            return self._config

    @property
    def store(self) -> StateStore:
        """The state store."""
        return self._store

    @property
    def state(self) -> ControlState:
        """The deployment state as last loaded or committed (immutable; what serves is built from it)."""
        return self._publisher.state

    # --- data plane: lock-free reads of one snapshot ------------------------------------------------

    @property
    def serving_cell(self) -> ServingCell:
        """The cell this manager publishes its serving snapshot into (what :class:`RuleEngine` reads)."""
        return self._publisher.cell

    @property
    def snapshot(self) -> ServingSnapshot:
        """What serves now (immutable)."""
        return self._cell.current

    def get_active_table(self) -> RuleTable | None:
        """The stable table (serving all traffic outside a rollout); None before any activation."""
        return self._cell.current.stable

    def route_and_get_table(self, request_hash: int) -> RuleTable | None:
        """The table serving a request with this hash (see :func:`compute_request_hash`)."""
        s = self._cell.current
        if s.candidate is not None and goes_to_candidate(s.multiplier, s.offset, s.limit, request_hash):
            return s.candidate
        return s.stable

    def route(self, key: str) -> RuleTable | None:
        """The table serving a request with routing key ``key`` (hashed once, only during a rollout)."""
        s = self._cell.current
        if s.candidate is not None and goes_to_candidate(s.multiplier, s.offset, s.limit, compute_request_hash(key)):
            return s.candidate
        return s.stable

    compute_request_hash = staticmethod(compute_request_hash)

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
        analysis: HealthThresholds | None = None,
    ) -> VersionId:
        """Validate a bundle, run its tests, compile it, and stage it as a new version.

        ``bundle`` is a :class:`RuleBundle`, a mapping, JSON text, or a path. Nothing served changes.
        Raises :class:`BundleValidationError` / :class:`BundleTestFailure` and leaves no trace when the
        bundle is not fit to serve. With a ``trust`` policy, an untrusted ``signature`` (default: the
        ``BUNDLE.sig`` beside a bundle file) is refused (:class:`BundleTrustError`) before anything runs.
        ``analysis``, stored with the version, is what every controller judges it by (window, limits, bake).
        """
        plan, base = stage(
            bundle, strategy, deployed_by or "unknown", signature, self._config, self._publisher, analysis
        )
        version_id: str = self._committer.apply(plan, "prepare", deployed_by or "unknown").result
        with self._lock:
            self._publisher.adopt_table(version_id, base)
        return version_id

    def activate_deployment(self, version_id: VersionId, *, actor: str = "unknown", supersede: bool = False) -> None:
        """Start serving a staged version by its strategy (``supersede`` rolls back a rollout in progress first).

        A rollout in progress refuses (:class:`RolloutInProgressError`); a scheduled version refuses before its time.
        """
        self._run("activate", actor, control.activate, version_id, supersede=supersede)

    def advance_rollout(self, *, actor: str = "unknown") -> bool:
        """Move the canary to its next stage if the current one has lasted ``stage_duration_secs``.

        Returns False (and changes nothing) when the stage is not yet due, or the candidate is
        unhealthy. A candidate with no verdict yet may be advanced by this explicit call (``tick()``
        waits for a healthy verdict). Reaching 100% completes the rollout.
        """
        return bool(self._run("advance", actor, control.advance, healthy=self._controller.candidate_verdict().healthy))

    def promote(self, *, actor: str = "unknown") -> VersionId:
        """Finish the canary now: the candidate takes all traffic. Returns it."""
        return str(self._run("promote", actor, control.promote))

    def conclude_experiment(self, winner_version_id: VersionId, *, actor: str = "unknown") -> VersionId:
        """End the A/B test: ``winner_version_id`` (A or B) serves all traffic. Returns it."""
        return str(self._run("conclude", actor, control.conclude, winner_version_id))

    def rollback(self, *, actor: str = "unknown", reason: str = "manual rollback") -> VersionId:
        """Return traffic to the stable (or the previous) version; returns it. :class:`NoPreviousVersionError` if none."""
        return str(self._run("rollback", actor, control.rollback, reason=reason))

    # --- health ---------------------------------------------------------------------------------------

    def update_health_metrics(
        self, version_id: VersionId, evaluations: int, errors: int = 0, timeouts: int = 0, avg_latency_us: float = 0.0
    ) -> bool | None:
        """Add figures an evaluator measured itself. The figures are **deltas** since its last report.

        Judges the version at once; with ``auto_rollback`` an unhealthy candidate (or newly active
        version) is rolled back before this returns. Returns the verdict (True / False / None).
        """
        with self._lock:
            self._require_version(version_id)
            self._health.add_reported(version_id, self._clock.now(), evaluations, errors, timeouts, avg_latency_us)
        self._controller.judge_and_act()
        return self.get_health_status(version_id)

    def get_health_status(self, version_id: VersionId) -> bool | None:
        """The verdict on a version over the recent window: True, False, or None (no verdict yet)."""
        return self.health_verdict(version_id).healthy

    def health_verdict(self, version_id: VersionId) -> Verdict:
        """The verdict on a version with its reason."""
        with self._lock:
            self._require_version(version_id)
            return self._controller.verdict_now(version_id)

    def get_experiment_report(self) -> ExperimentReport:
        """Per-variant figures of the A/B test in progress, with a significance test on error rates."""
        return self._controller.experiment_report()

    # --- the controller and the follower -------------------------------------------------------------

    def tick(self) -> TickReport:
        """Do all time-driven work once: scheduled activations, A/B test ends, health, canary stages.

        Safe to call from several processes at once: each step is planned from the stored state and
        committed against its revision, so it happens exactly once.
        """
        return self._controller.tick()

    def start_controller(self, interval: float = 1.0) -> BackgroundLoop:
        """Run :meth:`tick` every ``interval`` seconds on one background thread until stopped (a context manager too)."""
        return self._start(BackgroundLoop("rule-engine-controller", interval, self._controller.step))

    def start_following(self, poll_interval: float = 0.02, flush_interval: float = 1.0) -> BackgroundLoop:
        """Follow what other processes commit (pushed if the store can, else polled), flush health counters."""
        step = self._follower.step_with_flush(self._health, self._clock, flush_interval)
        return self._start(follow_loop(self._follower, self._store, step, poll_interval))

    @property
    def stale(self) -> str | None:
        """Why this manager may be serving an old state (the store is unavailable), or None."""
        return self._follower.stale_reason

    def refresh(self) -> bool:
        """Load the stored state now if it changed since the last load; True when something changed."""
        return self._follower.follow_once()

    # --- reads ----------------------------------------------------------------------------------------

    def get_deployment_info(self, version_id: VersionId) -> DeploymentInfo | None:
        """Everything about a version, or None if it is unknown (or evicted from history)."""
        return self._controller.info(version_id)

    def get_deployment_history(self) -> list[VersionId]:
        """The versions kept in history, oldest first (at most ``max_history``, plus protected ones)."""
        return list(self._publisher.state.versions)

    def get_rollout_status(self) -> RolloutStatus | None:
        """The rollout or A/B test in progress, and why it holds; None when there is none."""
        return self._controller.rollout_status()

    def audit_log(self, version_id: VersionId | None = None, limit: int | None = None) -> list[AuditEntry]:
        """The audit trail (every transition: who, when, from/to state, why), oldest first."""
        return self._store.audit_log(version_id, limit)

    def bundle_of(self, version_id: VersionId) -> RuleBundle:
        """The bundle a retained version was prepared from."""
        with self._lock:
            self._require_version(version_id)
            return self._publisher.bundle_of(version_id)

    def subscribe(self, point: HookPoint | str, hook: Hook) -> Callable[[], None]:
        """Call ``hook`` at ``point`` (before_swap, after_swap, on_error, on_rollback); returns an unsubscriber."""
        return self._hooks.subscribe(point, hook)

    # --- internals --------------------------------------------------------------------------------------

    def _run(self, action: str, actor: str, planner: Any, version_id: str | None = None, **args: Any) -> Any:
        """Commit ``planner(state, [version_id,] now, actor, **args)``, with this manager's history limit; the result."""
        lead = (version_id,) if version_id is not None else ()
        if planner is not control.rollback:
            args["max_history"] = self._config.max_history
        plan = lambda state, now: planner(state, *lead, now, actor, **args)  # noqa: E731
        return self._committer.apply(plan, action, actor, version_id).result

    def _start(self, loop: BackgroundLoop) -> BackgroundLoop:
        self._threads.append(loop)
        loop.start()
        return loop

    def _require_version(self, version_id: str) -> VersionRecord:
        versions = self._publisher.state.versions
        record = versions.get(version_id)
        if record is None:
            raise VersionNotFoundError(version_id, list(versions)[-5:])
        return record
