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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Unpack

from rule_engine.bundle.models import RuleBundle
from rule_engine.bundle.signing import Signature, TrustPolicy
from rule_engine.clock import Clock, SystemClock
from rule_engine.control import lifecycle, targeting
from rule_engine.control import transitions as control
from rule_engine.control.lifecycle import Operation
from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.status import DeploymentInfo, RolloutStatus, TickReport, VersionId
from rule_engine.control.strategies import Strategy
from rule_engine.deployment.background import BackgroundLoop
from rule_engine.deployment.commit import Committer
from rule_engine.deployment.config import DeploymentConfig
from rule_engine.deployment.controller import Controller
from rule_engine.deployment.fleet import Fleet
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
from rule_engine.serving.routing import compute_request_hash
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.serving.targeting import murmur3, route_hash, route_table
from rule_engine.stores.base import StateStore, open_store, store_url_from_env
from rule_engine.stores.memory import MemoryStore

__all__ = ["DeploymentManager"]


class DeploymentManager:
    """Prepares versions, rolls them out by strategy, watches health, rolls back, keeps history.

    A plain ``DeploymentManager()`` keeps its state in memory; :meth:`open` keeps it in a store shared by
    processes and follows what they commit. The constructor does no I/O (:meth:`refresh` loads a store).
    Settings are one immutable :class:`DeploymentConfig` (``config=``, or the keyword arguments). Every
    operation takes ``actor=`` (who, for the audit) and ``origin=`` (the OS account and host, ``user@host``).
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
        self._fleet = Fleet(self._store, self._publisher, self._clock, lambda: self._follower.stale_reason)
        gate, current = self._fleet.gate, lambda: self._config
        self._controller = Controller(self._committer, self._publisher, self._health, self._clock, current, gate)
        self._follower = Follower(self._lock, self._publisher, self._hooks)

    # --- construction, lifetime, settings -----------------------------------------------------------

    @classmethod
    def open(
        cls, url: str | StateStore | None = None, *, follow: bool = True, create: bool = True, **kwargs: Any
    ) -> DeploymentManager:
        """A manager on the store at ``url`` (default ``$RULE_ENGINE_STORE``, else ``sqlite:///.rule-engine/state.db``).

        Loads the stored state (``create=False``: a missing store is a :class:`StoreError`); ``follow`` picks up
        what other processes commit every ``poll_interval`` seconds (a keyword, default 0.02).
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
            self._fleet.leave()
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
    def fleet(self) -> Fleet:
        """This process's fleet registration and the rollout's convergence gate (see ``deployment/fleet.py``)."""
        return self._fleet

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
        """The table serving a request with this hash (see :func:`compute_request_hash`; no scope, no pins)."""
        return route_hash(self._cell.current, request_hash)

    def route(self, key: object, event: Mapping[str, Any] | None = None) -> RuleTable | None:
        """The table serving ``key`` (and ``event``, whose agent and flow a scoped rollout reads); never raises."""
        snapshot = self._cell.current  # a str key, hash alone: routing.py's rule inlined (test_routing_one_rule.py)
        if snapshot.hash_only and type(key) is str and key.isascii():
            return snapshot.candidate if murmur3(key, snapshot.seed, False) < snapshot.limit else snapshot.stable
        return route_table(snapshot, key, event)

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
        replace_policy: bool = False,
        origin: str | None = None,
    ) -> VersionId:
        """Validate, self-test, compile and stage a bundle; an unfit (or, with ``trust``, unsigned) one raises, no trace.

        ``analysis`` (stored with the version) is what every controller judges it by; a bundle of another
        policy than the active one's is refused unless ``replace_policy`` (docs/deployment.md).
        """
        who = deployed_by or "unknown"
        plan, base = stage(bundle, strategy, who, signature, self._config, self._publisher, analysis, replace_policy)
        version_id: str = self._committer.apply(lifecycle.stamped(plan, origin), "prepare", who).result
        with self._lock:
            self._publisher.adopt_table(version_id, base)
        return version_id

    def activate_deployment(
        self,
        version_id: VersionId,
        now: bool = False,
        *,
        supersede: bool = False,
        progress_deadline: float | None = None,
        progress_deadline_abort: bool = False,
        **op: Unpack[Operation],
    ) -> None:
        """Serve a staged version by its strategy; ``now`` brings a scheduled one forward (docs/deployment.md)."""
        deadline = lifecycle.progress_deadline(progress_deadline, progress_deadline_abort)
        self._op(
            "activate", control.activate, op, version_id, supersede=supersede, early=now, progress_deadline=deadline
        )

    def advance_rollout(self, **op: Unpack[Operation]) -> bool:
        """Move the canary to its next stage if due; False when not due, unhealthy or paused (no verdict may advance)."""
        return bool(self._op("advance", control.advance, op, healthy=self._controller.candidate_verdict().healthy))

    def promote(self, **op: Unpack[Operation]) -> VersionId:
        """Finish the canary now: the candidate takes all traffic. Returns it."""
        return str(self._op("promote", control.promote, op))

    def conclude_experiment(self, winner_version_id: VersionId, **op: Unpack[Operation]) -> VersionId:
        """End the A/B test: ``winner_version_id`` (A or B) serves all traffic. Returns it."""
        return str(self._op("conclude", control.conclude, op, winner_version_id))

    def rollback(self, **op: Unpack[Operation]) -> VersionId:
        """Return traffic to the stable (or the previous) version; returns it. :class:`NoPreviousVersionError` if none."""
        return str(self._op("rollback", control.rollback, {"reason": "manual rollback", **op}))

    def pause_rollout(self, **op: Unpack[Operation]) -> VersionId:
        """Stop the canary's stage clock (nothing advances or concludes it; health still guards it); returns it."""
        return str(self._op("pause", lifecycle.pause, op))

    def resume_rollout(self, **op: Unpack[Operation]) -> VersionId:
        """Restart a paused canary's clock (its stage start moves on by the paused time); returns it."""
        return str(self._op("resume", lifecycle.resume, op))

    def abort_rollout(self, **op: Unpack[Operation]) -> VersionId:
        """All traffic back to the stable version (returned); the candidate is kept ABORTED for :meth:`retry_rollout`."""
        return str(self._op("abort", lifecycle.abort, op))

    def retry_rollout(self, version_id: VersionId | None = None, **op: Unpack[Operation]) -> VersionId:
        """Restart an aborted rollout (default: the last) from its first stage with the same salt; returns it."""
        return str(self._op("retry", lifecycle.retry, op, version_id=version_id))

    def undo(
        self, to: VersionId | None = None, *, strategy: Strategy | None = None, **op: Unpack[Operation]
    ) -> VersionId:
        """Make a superseded version (default: the previous) active again, blue-green or by a canary ``strategy``."""
        return str(self._op("undo", lifecycle.undo, op, to=to, strategy=strategy))

    def cancel_deployment(self, version_id: VersionId, **op: Unpack[Operation]) -> None:
        """End a staged or scheduled version: it is CANCELLED and never serves."""
        self._op("cancel", lifecycle.cancel, op, version_id)

    def pin_keys(self, keys: Iterable[str], version_id: VersionId, **op: Unpack[Operation]) -> int:
        """Serve ``keys`` by the rollout's stable or candidate ``version_id`` until the rollout ends; how many changed."""
        return int(self._op("pin", targeting.pin, op, version_id, keys=targeting.keys_of(keys, "pin")))

    def unpin_keys(self, keys: Iterable[str], **op: Unpack[Operation]) -> int:
        """Give pinned ``keys`` back to the hash (docs/routing.md, "Targeting"); how many were pinned."""
        return int(self._op("unpin", targeting.unpin, op, keys=targeting.keys_of(keys, "unpin")))

    def update_health_metrics(
        self, version_id: VersionId, evaluations: int, errors: int = 0, timeouts: int = 0, avg_latency_us: float = 0.0
    ) -> bool | None:
        """Add figures an evaluator measured itself (**deltas** since its last report) and judge at once.

        With ``auto_rollback`` an unhealthy candidate (or newly active version) is rolled back before this returns.
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
        """Do all time-driven work once (schedules, A/B test ends, health, progress deadlines, stages), exactly once across processes."""
        return self._controller.tick()

    def start_controller(self, interval: float = 1.0) -> BackgroundLoop:
        """Run :meth:`tick` every ``interval`` seconds on one background thread until stopped (a context manager too)."""
        return self._start(BackgroundLoop("rule-engine-controller", interval, self._controller.step))

    def start_following(self, poll_interval: float = 0.02, flush_interval: float = 1.0) -> BackgroundLoop:
        """Follow what other processes commit (pushed if the store can, else polled), flush health counters."""
        step = self._fleet.beating(self._follower.step_with_flush(self._health, self._clock, flush_interval))
        return self._start(follow_loop(self._follower, self._store, step, poll_interval))

    @property
    def stale(self) -> str | None:
        """Why this manager may be serving an old state (the store is unavailable), or None."""
        return self._follower.stale_reason

    def refresh(self) -> bool:
        """Load the stored state now if it changed since the last load; True when something changed."""
        return self._follower.follow_once()

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

    def _op(self, action: str, planner: Any, op: Operation, lead: str | None = None, **args: Any) -> Any:
        """Commit ``planner(state, [lead,] now, actor, reason=, **args)`` stamped with the origin; the result."""
        actor = op.get("actor", "unknown")
        args.update(reason=op.get("reason", ""), max_history=self._config.max_history)
        plan = lambda state, now: planner(state, *((lead,) if lead is not None else ()), now, actor, **args)  # noqa: E731
        return self._committer.apply(lifecycle.stamped(plan, op.get("origin")), action, actor, lead).result

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
