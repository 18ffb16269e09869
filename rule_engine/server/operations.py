"""The write operations of the HTTP API, as a table: one row per operation.

Each row names the manager method it needs and how it runs: ``POST /api/v1/{name}`` is generated for
every row. A row whose method the manager does not have (an operation a later version adds) answers
501 problem+json naming the operation, so the API and the dashboard already show it. Adding an
operation is one line in :data:`OPERATIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rule_engine.bundle.signing import Signature
from rule_engine.control.strategies import ABTest, BlueGreen, Canary, Scheduled, Strategy
from rule_engine.errors import InvalidStrategyError
from rule_engine.observability.views import advance_view, conclude_view, promote_view, rollback_view

if TYPE_CHECKING:
    from rule_engine.deployment.manager import DeploymentManager

__all__ = ["OPERATIONS", "DeployBody", "Operation", "OperationBody", "build_strategy", "deploy"]

MAX_STAGES = 100
_Reason = Field(default=None, max_length=1000)


class OperationBody(BaseModel):
    """The optional body of a control operation."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reason: str | None = _Reason
    winner: str | None = Field(default=None, max_length=512, description="conclude: the winning version id")
    version_id: str | None = Field(default=None, max_length=512, description="activate: the staged version")
    supersede: bool = False


class DeployBody(BaseModel):
    """A bundle and the options of ``rule-engine deploy``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    bundle: dict[str, Any]
    strategy: Literal["blue-green", "canary", "ab-test", "scheduled"] | None = None
    stages: list[float] | None = Field(default=None, max_length=MAX_STAGES)
    stage_duration: float | None = Field(default=None, ge=0)
    split_ratio: float | None = None
    test_duration: float | None = Field(default=None, ge=0)
    at: float | str | None = Field(default=None, description="scheduled: unix seconds or ISO 8601 with timezone")
    supersede: bool = False
    signature: dict[str, str] | None = Field(default=None, description="the BUNDLE.sig JSON, when trust is on")


def _time(value: float | str) -> float:
    if isinstance(value, float | int):
        return float(value)
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise InvalidStrategyError(f"at: {value!r} is neither ISO 8601 nor unix seconds") from None
    if moment.tzinfo is None:
        raise InvalidStrategyError(f"at: {value!r} has no timezone")
    return moment.timestamp()


def build_strategy(body: DeployBody) -> Strategy:
    """The strategy the deploy options name (as ``rule-engine deploy`` infers it)."""
    canary = body.stages is not None or body.stage_duration is not None
    ab = body.split_ratio is not None or body.test_duration is not None
    kind = body.strategy or (
        "scheduled" if body.at is not None else "canary" if canary else "ab-test" if ab else "blue-green"
    )
    misplaced = [
        name
        for name, bad in (
            ("stages/stage_duration", canary and kind != "canary"),
            ("split_ratio/test_duration", ab and kind != "ab-test"),
            ("at", body.at is not None and kind != "scheduled"),
        )
        if bad
    ]
    if misplaced:
        raise InvalidStrategyError(f"{', '.join(misplaced)} do(es) not apply to strategy {kind}")
    if kind == "canary":
        options: dict[str, Any] = {}
        if body.stages is not None:
            options["stages"] = tuple(body.stages)
        if body.stage_duration is not None:
            options["stage_duration_secs"] = body.stage_duration
        return Canary(**options)
    if kind == "ab-test":
        options = {}
        if body.split_ratio is not None:
            options["split_ratio"] = body.split_ratio
        if body.test_duration is not None:
            options["test_duration_secs"] = body.test_duration
        return ABTest(**options)
    if kind == "scheduled":
        if body.at is None:
            raise InvalidStrategyError("strategy scheduled needs 'at'")
        when = _time(body.at)
        if not math.isfinite(when):
            raise InvalidStrategyError("at must be a finite time")
        return Scheduled(when)
    return BlueGreen()


def deploy(manager: DeploymentManager, body: DeployBody, actor: str) -> tuple[str, Strategy]:
    """Prepare the bundle and (unless scheduled) activate it; returns the version id and the strategy."""
    strategy = build_strategy(body)
    signature = Signature.from_dict(body.signature) if body.signature is not None else None
    version_id = manager.prepare_deployment(body.bundle, strategy, deployed_by=actor, signature=signature)
    if not isinstance(strategy, Scheduled):
        manager.activate_deployment(version_id, actor=actor, supersede=body.supersede)
    return version_id, strategy


Run = Callable[["DeploymentManager", OperationBody, str], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Operation:
    """One write operation: its name, the manager method it needs, how it runs, what it answers."""

    name: str
    method: str
    summary: str
    run: Run

    def available(self, manager: DeploymentManager) -> bool:
        """Whether this manager has the operation."""
        return callable(getattr(manager, self.method, None))


def _rollback(manager: DeploymentManager, body: OperationBody, actor: str) -> dict[str, Any]:
    before = manager.get_rollout_status()
    rolled = before.version_id if before else manager.get_active_version_id()
    return rollback_view(rolled, manager.rollback(actor=actor, reason=body.reason or "manual rollback"))


def _conclude(manager: DeploymentManager, body: OperationBody, actor: str) -> dict[str, Any]:
    if not body.winner:
        raise InvalidStrategyError("conclude needs 'winner': the A or B version id")
    return conclude_view(manager.conclude_experiment(body.winner, actor=actor))


def _activate(manager: DeploymentManager, body: OperationBody, actor: str) -> dict[str, Any]:
    if not body.version_id:
        raise InvalidStrategyError("activate needs 'version_id': a staged version")
    manager.activate_deployment(body.version_id, actor=actor, supersede=body.supersede)
    info = manager.get_deployment_info(body.version_id)
    return {
        "version_id": body.version_id,
        "state": info.state.value if info else None,
        "percentage": info.current_percentage if info else 0.0,
        "active_version": manager.get_active_version_id(),
    }


def _lifecycle(method: str, target: str | None = None, *, required: bool = False) -> Run:
    """An operation of the lifecycle API: ``manager.<method>(actor=..., reason=...)``.

    ``target`` names the keyword the body's ``version_id`` is passed as ("" for the first positional
    argument); ``required`` refuses a body without one.
    """

    def run(manager: DeploymentManager, body: OperationBody, actor: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"actor": actor}
        args: list[Any] = []
        if body.reason:
            kwargs["reason"] = body.reason
        if required and not body.version_id:
            raise InvalidStrategyError(f"{method} needs 'version_id'")
        if target is not None and body.version_id:
            if target:
                kwargs[target] = body.version_id
            else:
                args.append(body.version_id)
        result = getattr(manager, method)(*args, **kwargs)
        rollout = manager.get_rollout_status()
        return {
            "operation": method,
            "result": result if isinstance(result, str | bool | int | float | None) else str(result),
            "active_version": manager.get_active_version_id(),
            "rollout": rollout.to_dict() if rollout else None,
        }

    return run


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "advance",
        "advance_rollout",
        "Move the canary to its next stage if due",
        lambda m, b, a: advance_view(m, m.advance_rollout(actor=a)),
    ),
    Operation(
        "promote",
        "promote",
        "Finish the canary now: the candidate takes all traffic",
        lambda m, b, a: promote_view(m.promote(actor=a)),
    ),
    Operation("rollback", "rollback", "Return traffic to the stable (or previous) version", _rollback),
    Operation("conclude", "conclude_experiment", "End the A/B test with a winner", _conclude),
    Operation("activate", "activate_deployment", "Start serving a staged version by its strategy", _activate),
    Operation("pause", "pause_rollout", "Pause the canary: its stage clock stops", _lifecycle("pause_rollout")),
    Operation("resume", "resume_rollout", "Resume a paused canary", _lifecycle("resume_rollout")),
    Operation(
        "abort",
        "abort_rollout",
        "Abort the rollout: traffic back to stable, candidate kept",
        _lifecycle("abort_rollout"),
    ),
    Operation(
        "retry",
        "retry_rollout",
        "Retry an aborted rollout with the same salt",
        _lifecycle("retry_rollout", "version_id"),
    ),
    Operation(
        "undo", "undo", "Make a superseded version (version_id, default the previous) active", _lifecycle("undo", "to")
    ),
    Operation(
        "cancel",
        "cancel_deployment",
        "Cancel a staged or scheduled version",
        _lifecycle("cancel_deployment", "", required=True),
    ),
)
