"""The read side of :class:`~rule_engine.DeploymentManager`: what serves, history, health, audit.

Nothing here changes state. The data-plane reads take the serving snapshot from the cell once per call,
with no lock (:class:`~rule_engine.RuleEngine` does the same); the control-plane reads answer from the
state last loaded or committed, the health ledger and the store's audit. The manager
(:mod:`rule_engine.deployment.manager`) inherits them and owns every operation that changes something.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rule_engine.errors import VersionNotFoundError
from rule_engine.serving.routing import compute_request_hash
from rule_engine.serving.targeting import murmur3, route_hash, route_table

if TYPE_CHECKING:
    from rule_engine.bundle.models import RuleBundle
    from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
    from rule_engine.control.status import DeploymentInfo, RolloutStatus, VersionId
    from rule_engine.deployment.controller import Controller
    from rule_engine.deployment.follower import Follower
    from rule_engine.deployment.publisher import Publisher
    from rule_engine.evaluation.table import RuleTable
    from rule_engine.health.report import ExperimentReport
    from rule_engine.health.verdict import Verdict
    from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
    from rule_engine.stores.base import StateStore

__all__ = ["ManagerReads"]


class ManagerReads:
    """Queries of a deployment manager; the manager builds the collaborators these read."""

    _cell: ServingCell
    _controller: Controller
    _follower: Follower
    _lock: threading.RLock
    _publisher: Publisher
    _store: StateStore

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

    # --- control plane: what the state and the ledger say (no change) ----------------------------

    @property
    def state(self) -> ControlState:
        """The deployment state as last loaded or committed (immutable; what serves is built from it)."""
        return self._publisher.state

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

    @property
    def stale(self) -> str | None:
        """Why this manager may be serving an old state (the store is unavailable), or None."""
        return self._follower.stale_reason

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

    def _require_version(self, version_id: str) -> VersionRecord:
        versions = self._publisher.state.versions
        record = versions.get(version_id)
        if record is None:
            raise VersionNotFoundError(version_id, list(versions)[-5:])
        return record
