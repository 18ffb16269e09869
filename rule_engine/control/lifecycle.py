"""Pure planners for the operator's lifecycle: pause, resume, abort, retry, undo, cancel, and the controller's
progress deadline and scheduled-version hold (Argo Rollouts' vocabulary; docs/deployment.md).

Like :mod:`rule_engine.control.transitions`, each takes a :class:`ControlState`, the time, the actor and the
operation's arguments, raises a :class:`DeploymentError` before computing anything when the operation is
not allowed, and returns a :class:`Change`.

Decisions (documented in docs/deployment.md):

- ``pause`` stops a canary's stage clock; ``resume`` shifts the stage start by the paused duration, so the
  stage gets its full time. A paused canary is neither advanced nor concluded by the controller, but its
  health is still judged: automatic rollback (or a hold for a person) still protects it. An A/B test has
  no stages to pause.
- ``abort`` returns all traffic to the stable version and keeps the candidate as ABORTED, with its rollout
  (salt, progress deadline) stored on the record; ``retry`` restarts that rollout from its first stage
  with the same salt, so the same keys see the candidate again, against the version active now.
- ``undo`` makes a SUPERSEDED version active again (default: the one the active version replaced), at once
  (blue-green) or as a canary back; it is a new activation, so a second undo returns to where it started.
- ``cancel`` ends a STAGED or scheduled version (CANCELLED, terminal).
- A scheduled version never silently overrides a newer manual deploy: when it is due and the active
  version was activated after the schedule was prepared (by a person, not by an earlier schedule), the
  controller holds it and says why.
- A progress deadline: a rollout stage that has no verdict (no or thin traffic) for that long is marked
  as exceeding it (the rollout holds, saying so) or, when asked, is aborted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TypedDict

from rule_engine.control.records import AuditEntry, ControlState, Rollout, VersionRecord
from rule_engine.control.shadowing import entering
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import BlueGreen, Strategy
from rule_engine.control.transitions import (
    Change,
    _get,
    activate,
    evict,
    first_stage,
    make_active,
    scheduled_due,
    start_rollout,
)
from rule_engine.errors import (
    InvalidStrategyError,
    InvalidTransitionError,
    NoPreviousVersionError,
    RolloutInProgressError,
)
from rule_engine.serving.routing import BASIS_POINTS

__all__ = [
    "Operation",
    "abort",
    "activate_scheduled",
    "cancel",
    "check_progress",
    "pause",
    "progress_deadline",
    "resume",
    "retry",
    "stamped",
    "undo",
]

S = DeploymentState


class Operation(TypedDict, total=False):
    """Who runs an operation and why, for the audit: what every :class:`DeploymentManager` operation takes.

    ``actor`` is who declares the change (``--by``; default ``"unknown"``), ``reason`` why (free text),
    ``origin`` the OS account and host that ran it (``user@host``; the CLI fills it in).
    """

    actor: str
    reason: str
    origin: str | None


def stamped(
    plan: Callable[[ControlState, float], Change], origin: str | None
) -> Callable[[ControlState, float], Change]:
    """``plan`` whose audit entries record ``origin`` (the OS account and host that ran the operation)."""
    if origin is None:
        return plan

    def with_origin(state: ControlState, now: float) -> Change:
        change = plan(state, now)
        change.audit = [_with_origin(entry, origin) for entry in change.audit]
        return change

    return with_origin


def _with_origin(entry: AuditEntry, origin: str) -> AuditEntry:
    return entry if entry.origin is not None else replace(entry, origin=origin)


def _rollout(state: ControlState, action: str) -> Rollout:
    if state.rollout is None:
        raise InvalidTransitionError(f"cannot {action}: no rollout is in progress")
    return state.rollout


def pause(state: ControlState, now: float, actor: str, *, reason: str = "", max_history: int = 10) -> Change:
    """Stop the canary's stage clock: it stays at its share until :func:`resume`."""
    rollout = _rollout(state, "pause")
    if not rollout.finishes_by_itself:
        raise InvalidTransitionError(
            f"cannot pause: {rollout.candidate!r} is in an A/B test, which has no stages to pause"
        )
    if rollout.paused_at is not None:
        raise InvalidTransitionError(f"cannot pause: the rollout of {rollout.candidate!r} is already paused")
    change = Change(state, "pause", actor, result=rollout.candidate)
    change.note(state.versions[rollout.candidate], now, reason or "paused")
    change.put(rollout=replace(rollout, paused_at=now))
    change.event("rollout.paused", version_id=rollout.candidate, strategy=rollout.kind, reason=reason)
    return change


def resume(state: ControlState, now: float, actor: str, *, reason: str = "", max_history: int = 10) -> Change:
    """Start the stage clock again; the stage start moves forward by the time it was paused."""
    rollout = _rollout(state, "resume")
    if rollout.paused_at is None:
        raise InvalidTransitionError(f"cannot resume: the rollout of {rollout.candidate!r} is not paused")
    paused_for = max(0.0, now - rollout.paused_at)
    change = Change(state, "resume", actor, result=rollout.candidate)
    change.note(
        state.versions[rollout.candidate],
        now,
        f"{reason or 'resumed'} (paused for {paused_for:.1f}s; stage clock shifted)",
    )
    change.put(rollout=replace(rollout, paused_at=None, stage_started_at=rollout.stage_started_at + paused_for))
    change.event("rollout.resumed", version_id=rollout.candidate, strategy=rollout.kind, paused_secs=paused_for)
    return change


def abort(
    state: ControlState, now: float, actor: str, *, reason: str = "", max_history: int = 10, trigger: str = "manual"
) -> Change:
    """All traffic back to the stable version; the candidate is kept as ABORTED, ready for :func:`retry`."""
    rollout = _rollout(state, "abort")
    candidate = state.versions[rollout.candidate]
    why = reason or "aborted"
    change = Change(state, "abort", actor, result=rollout.stable)
    aborted = change.move(candidate, S.ABORTED, now, reason=why, finished_at=now, failure_reason=why)
    change.put(replace(aborted, last_rollout=rollout), rollout=None, last_rollback_at=now)
    change.serving_changed = True
    change.rolled_back = candidate.version_id
    change.event(
        "rollout.aborted",
        version_id=candidate.version_id,
        serving_version_id=rollout.stable,
        strategy=rollout.kind,
        from_state=S.ROLLING_OUT.value,
        to_state=S.ABORTED.value,
        reason=why,
        trigger=trigger,
    )
    return change


def retry(
    state: ControlState,
    now: float,
    actor: str,
    *,
    version_id: str | None = None,
    reason: str = "",
    max_history: int = 10,
) -> Change:
    """Restart an ABORTED version's rollout from its first stage, with the same salt (the same keys see it again).

    Without ``version_id``: the most recently aborted version.
    """
    if version_id is None:
        aborted = [r for r in state.versions.values() if r.state is S.ABORTED]
        if not aborted:
            raise InvalidTransitionError("cannot retry: no aborted rollout is retained")
        version_id = max(aborted, key=lambda r: (r.updated_at, r.seq)).version_id
    record = _get(state, version_id)
    if state.rollout is not None:
        raise RolloutInProgressError(state.rollout.candidate, version_id)
    if record.state is not S.ABORTED or record.last_rollout is None:
        raise InvalidTransitionError(f"cannot retry {version_id!r}: it is {record.state.value}, not aborted")
    if state.active is None:
        raise NoPreviousVersionError("no version is active to roll out against")
    first = record.strategy.first_share_bp()
    previous = record.last_rollout
    rollout = replace(
        previous,
        stable=state.active,
        share_bp=first if first is not None else previous.share_bp,
        stage_index=0,
        started_at=now,
        stage_started_at=now,
        ended_at=None,
        held=None,
        paused_at=None,
        deadline_exceeded_at=None,
    )
    rollout = entering(rollout, record.strategy)  # a strategy with a shadow phase starts with it again
    change = Change(state, "retry", actor, result=version_id)
    start_rollout(
        change,
        replace(record, last_rollout=None, failure_reason=None, finished_at=None),
        rollout,
        now,
        reason=f"{reason or 'retried'}: {record.strategy.describe()} from its first stage, same salt",
    )
    evict(change, max_history, now)
    return change


def undo(
    state: ControlState,
    now: float,
    actor: str,
    *,
    to: str | None = None,
    strategy: Strategy | None = None,
    reason: str = "",
    max_history: int = 10,
) -> Change:
    """Make a SUPERSEDED version active again (default: the previous one), at once or as a canary back."""
    if state.rollout is not None:
        raise InvalidTransitionError(
            f"cannot undo: the rollout of {state.rollout.candidate!r} is in progress; abort or promote it first"
        )
    if state.active is None:
        raise NoPreviousVersionError("no version is active")
    target_id = to if to is not None else state.rollback_target
    if target_id is None:
        raise NoPreviousVersionError(f"{state.active!r} replaced no retained version; name one with to=")
    if target_id == state.active:
        raise InvalidTransitionError(f"cannot undo to {target_id!r}: it is already active")
    chosen = strategy if strategy is not None else BlueGreen()
    if chosen.activates_at() is not None or not chosen.finishes_by_itself:
        raise InvalidStrategyError(f"undo goes back at once (blue-green) or as a canary, not as {chosen.kind}")
    retained = _get(state, target_id)
    if retained.state is not S.SUPERSEDED:
        raise InvalidTransitionError(
            f"cannot undo to {target_id!r}: it is {retained.state.value}; undo brings back a version that was "
            "active (superseded)"
        )
    record = replace(retained, strategy=chosen, activated_at=None, reinstated=True)
    change = Change(state, "undo", actor, result=target_id)
    why = f"{reason or 'undo'}: back to {target_id} from {state.active} ({chosen.describe()})"
    first = chosen.first_share_bp()
    if first is None or first >= BASIS_POINTS:
        make_active(change, record, now, reason=why)
    else:
        start_rollout(change, record, first_stage(chosen.kind, target_id, state.active, first, now), now, reason=why)
    change.event("deployment.undone", version_id=target_id, previous_version_id=state.active, strategy=chosen.kind)
    evict(change, max_history, now)
    return change


def cancel(
    state: ControlState, version_id: str, now: float, actor: str, *, reason: str = "", max_history: int = 10
) -> Change:
    """End a STAGED or scheduled version: CANCELLED, it never serves."""
    record = _get(state, version_id)
    change = Change(state, "cancel", actor, result=version_id)
    cancelled = change.move(record, S.CANCELLED, now, reason=reason or "cancelled", finished_at=now, held=None)
    change.put(cancelled)
    change.event("deployment.cancelled", version_id=version_id, strategy=record.strategy.kind, reason=reason)
    return change


def _overridden_by(state: ControlState, record: VersionRecord) -> str | None:
    """The active version if a person activated it after ``record`` was scheduled (D16), else None.

    Schedules replace each other in time order as before: an active version that was itself scheduled
    no later than ``record`` does not hold it.
    """
    active = state.versions.get(state.active) if state.active else None
    if active is None or active.activated_at is None or active.activated_at <= record.created_at:
        return None
    own_time, due = active.strategy.activates_at(), record.strategy.activates_at()
    if own_time is not None and due is not None and own_time <= due:
        return None
    return active.version_id


def activate_scheduled(
    state: ControlState, version_id: str, now: float, actor: str, *, max_history: int = 10
) -> Change | None:
    """The controller's step for a due scheduled version: activate it, or hold it (None: nothing to do).

    A schedule never silently overrides a newer manual deploy: if the active version was activated
    after this one was scheduled, it is held (once, audited) until a person activates or cancels it.
    """
    if state.rollout is not None or all(r.version_id != version_id for r in scheduled_due(state, now)):
        return None  # not due, or another process activated it first
    record = state.versions[version_id]
    newer = _overridden_by(state, record)
    if newer is None:
        return activate(state, version_id, now, actor, max_history=max_history)
    if record.held is not None:
        return None
    reason = (
        f"{newer} was activated after {version_id} was scheduled, so the schedule does not override it: "
        f"'rule-engine activate {version_id} --now' swaps it in, 'rule-engine cancel {version_id}' drops it"
    )
    change = Change(state, "hold", actor)
    change.note(record, now, f"held: {reason}")
    change.put(replace(record, held=reason, updated_at=now))
    change.event("schedule.held", version_id=version_id, active_version_id=newer, reason=reason)
    return change


def check_progress(
    state: ControlState, now: float, actor: str, *, verdict_reached: bool, detail: str = ""
) -> Change | None:
    """The progress deadline: a stage with no verdict past it is marked (it holds) or aborted; None: nothing to do."""
    rollout = state.rollout
    if rollout is None or rollout.progress_deadline_secs is None or verdict_reached:
        return None
    if rollout.paused_at is not None or rollout.held is not None or rollout.ended_at is not None:
        return None
    if now - rollout.stage_started_at < rollout.progress_deadline_secs:
        return None
    why = f"progress deadline of {rollout.progress_deadline_secs:g}s exceeded with no verdict" + (
        f" ({detail})" if detail else ""
    )
    if rollout.progress_deadline_abort:
        return abort(state, now, actor, reason=why, trigger="progress-deadline")
    if rollout.deadline_exceeded_at is not None:
        return None
    change = Change(state, "hold", actor)
    change.note(state.versions[rollout.candidate], now, why)
    change.put(rollout=replace(rollout, deadline_exceeded_at=now))
    change.event("rollout.progress_deadline_exceeded", version_id=rollout.candidate, reason=why)
    return change


def progress_deadline(secs: float | None, abort: bool = False) -> tuple[float, bool] | None:
    """A validated ``(seconds, abort)`` progress deadline (None: none); a bad value raises :class:`InvalidStrategyError`."""
    if secs is None:
        if abort:
            raise InvalidStrategyError("progress_deadline_abort needs a progress_deadline")
        return None
    if isinstance(secs, bool) or not isinstance(secs, int | float) or not math.isfinite(secs) or secs <= 0:
        raise InvalidStrategyError(f"progress_deadline must be a number of seconds > 0, got {secs!r}")
    return float(secs), bool(abort)
