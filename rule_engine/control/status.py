"""What the manager reports: a version's info, a rollout's status, a tick's report (immutable views)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rule_engine.clock import iso
from rule_engine.control.gate_holds import gate_hold_reason
from rule_engine.control.records import ControlState, VersionRecord
from rule_engine.control.shadowing import ShadowPhase
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import Strategy
from rule_engine.health.thresholds import HealthMetrics
from rule_engine.health.verdict import Verdict

__all__ = [
    "DeploymentInfo",
    "RolloutStatus",
    "ScheduledVersion",
    "TickReport",
    "VersionId",
    "info_of",
    "rollout_status",
    "scheduled_versions",
]

VersionId = str


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """Everything known about one version."""

    version_id: VersionId
    bundle_id: str
    bundle_version: str
    digest: str
    deployed_by: str
    strategy: Strategy
    state: DeploymentState
    current_percentage: float
    failure_reason: str | None
    created_at: float
    updated_at: float
    activated_at: float | None
    finished_at: float | None
    health_metrics: HealthMetrics

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "version_id": self.version_id,
            "bundle_id": self.bundle_id,
            "bundle_version": self.bundle_version,
            "digest": self.digest,
            "deployed_by": self.deployed_by,
            "strategy": self.strategy.to_dict(),
            "state": self.state.value,
            "current_percentage": self.current_percentage,
            "failure_reason": self.failure_reason,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "activated_at": iso(self.activated_at),
            "finished_at": iso(self.finished_at),
            "health": self.health_metrics.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    """A rollout or A/B test in progress, and why it is (or is not) moving."""

    version_id: VersionId
    stable_version_id: VersionId
    strategy: str
    state: DeploymentState
    percentage: float
    stage: int
    stages: tuple[float, ...]
    stage_started_at: float
    next_step_at: float | None
    ended_at: float | None
    verdict: Verdict
    holding: str | None
    paused: bool = False
    paused_at: float | None = None
    progress_deadline_secs: float | None = None
    progress_deadline_abort: bool = False
    deadline_exceeded_at: float | None = None
    salt: str = ""
    #: The agents and flows the rollout is limited to (empty = everyone); docs/routing.md "Targeting".
    agents: tuple[str, ...] = ()
    flows: tuple[str, ...] = ()
    #: How many keys are pinned to the stable or the candidate version.
    pins: int = 0
    #: The shadow phase's fleet-wide figures and verdict (None: not in a shadow phase; control/shadowing.py).
    shadow: ShadowPhase | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "version_id": self.version_id,
            "stable_version_id": self.stable_version_id,
            "strategy": self.strategy,
            "state": self.state.value,
            "percentage": self.percentage,
            "stage": self.stage,
            "stages": list(self.stages),
            "stage_started_at": iso(self.stage_started_at),
            "next_step_at": iso(self.next_step_at),
            "ended_at": iso(self.ended_at),
            "healthy": self.verdict.healthy,
            "health_reason": self.verdict.reason,
            "holding": self.holding,
            "paused": self.paused,
            "paused_at": iso(self.paused_at),
            "progress_deadline_secs": self.progress_deadline_secs,
            "progress_deadline_abort": self.progress_deadline_abort,
            "deadline_exceeded_at": iso(self.deadline_exceeded_at),
            "salt": self.salt,
            "scope": {"agents": list(self.agents), "flows": list(self.flows)},
            "pins": self.pins,
            "phase": "shadow" if self.shadow is not None else "traffic",
            "shadow": self.shadow.to_dict() if self.shadow is not None else None,
        }


@dataclass(frozen=True, slots=True)
class ScheduledVersion:
    """A scheduled version waiting for its time (or held: a newer deploy came after it was scheduled)."""

    version_id: VersionId
    activation_time: float
    held: str | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``status --json``'s ``scheduled`` list)."""
        return {"version_id": self.version_id, "activation_time": iso(self.activation_time), "held": self.held}


def scheduled_versions(state: ControlState) -> list[ScheduledVersion]:
    """The pending scheduled versions, earliest first."""
    pending = [r for r in state.versions.values() if r.state is DeploymentState.STAGED]
    timed = [(at, r) for r in pending if (at := r.strategy.activates_at()) is not None]
    return [
        ScheduledVersion(r.version_id, at, r.held) for at, r in sorted(timed, key=lambda item: (item[0], item[1].seq))
    ]


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one :meth:`DeploymentManager.tick` did, and what it held back and why."""

    actions: tuple[str, ...]
    holding: tuple[str, ...]


def info_of(record: VersionRecord, state: ControlState, metrics: HealthMetrics) -> DeploymentInfo:
    """The info of a version in ``state``, with its health figures."""
    rollout = state.rollout
    if rollout is not None and record.version_id == rollout.candidate:
        percentage = rollout.share_bp / 100
    elif rollout is not None and record.version_id == rollout.stable:
        percentage = 100 - rollout.share_bp / 100
    elif record.version_id == state.active:
        percentage = 100.0
    else:
        percentage = 0.0
    return DeploymentInfo(
        version_id=record.version_id,
        bundle_id=record.bundle_id,
        bundle_version=record.bundle_version,
        digest=record.digest,
        deployed_by=record.deployed_by,
        strategy=record.strategy,
        state=record.state,
        current_percentage=percentage,
        failure_reason=record.failure_reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
        activated_at=record.activated_at,
        finished_at=record.finished_at,
        health_metrics=metrics,
    )


def rollout_status(
    state: ControlState, verdict: Verdict, now: float, *, auto_rollback: bool, shadow: ShadowPhase | None = None
) -> RolloutStatus | None:
    """The rollout in ``state`` (None when there is none), its next step and why it holds.

    Given the candidate's verdict, and its ``shadow`` phase (figures and verdict) while it is in one.
    """
    rollout = state.rollout
    if rollout is None:
        return None
    record = state.versions[rollout.candidate]
    strategy = record.strategy
    stages = strategy.stage_percentages()
    paused = rollout.paused_at is not None
    next_at = None if paused else strategy.step_ends_at(rollout.started_at, rollout.stage_started_at)
    holding: str | None = None
    guard = "automatic rollback still protects it" if auto_rollback else "an unhealthy verdict still holds it"
    if paused and verdict.healthy is not False:
        holding = f"paused since {iso(rollout.paused_at)}; the stage clock stands still until resumed ({guard})"
    elif shadow is not None:
        holding = shadow.holding
        next_at = None
    elif strategy.finishes_by_itself:
        if verdict.healthy is False:
            holding = f"unhealthy: {verdict.reason}" + ("" if auto_rollback else "; waiting for a person")
        elif rollout.held is not None:
            holding = f"was unhealthy: {rollout.held}; waiting for a person"
        elif verdict.healthy is None and rollout.deadline_exceeded_at is not None:
            holding = f"progress deadline of {rollout.progress_deadline_secs:g}s exceeded: {verdict.reason}"
        elif verdict.healthy is None:
            holding = verdict.reason
        elif (gate := gate_hold_reason(rollout)) is not None:  # stored by the ticking controller, seen by all
            holding = gate
        elif next_at is not None and now < next_at:
            holding = f"stage lasts until {iso(next_at)}"
    elif rollout.ended_at is not None:
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
        paused=paused,
        paused_at=rollout.paused_at,
        progress_deadline_secs=rollout.progress_deadline_secs,
        progress_deadline_abort=rollout.progress_deadline_abort,
        deadline_exceeded_at=rollout.deadline_exceeded_at,
        salt=rollout.salt,
        agents=strategy.scope()[0],
        flows=strategy.scope()[1],
        pins=len(rollout.pins),
        shadow=shadow,
    )
