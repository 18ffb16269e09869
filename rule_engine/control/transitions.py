"""Pure transitions of the deployment state.

Each function takes a :class:`ControlState`, the time and the operation's arguments, checks that the
operation is allowed, and returns a :class:`Change` (the new state, its audit entries, its log events)
without touching anything else. It raises a :class:`DeploymentError` before computing anything when the
operation is not allowed, so a refused operation has no effect. The manager commits the change to its
store and publishes what serves.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from rule_engine.control.records import AuditEntry, ControlState, Rollout, VersionRecord
from rule_engine.control.shadowing import SHADOW, in_shadow, shadow_options
from rule_engine.control.states import DeploymentState, check_transition
from rule_engine.errors import (
    ActivationTimeNotReachedError,
    DeploymentError,
    InvalidTransitionError,
    NoPreviousVersionError,
    RolloutInProgressError,
    VersionNotFoundError,
)
from rule_engine.serving.routing import ALGORITHM_VERSION, BASIS_POINTS

__all__ = ["MAX_PENDING_SCHEDULED", "Change", "activate", "advance", "conclude", "end_experiment", "prepare"]
__all__ += ["promote", "rollback"]

S = DeploymentState

#: At most this many scheduled versions may wait for their time at once (D22): each one is protected
#: from eviction and rewritten with the state on every commit, so the bound keeps both small.
MAX_PENDING_SCHEDULED = 50


@dataclass
class Change:
    """The outcome of one planned operation."""

    state: ControlState
    action: str
    actor: str
    audit: list[AuditEntry] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bundles: dict[str, str] = field(default_factory=dict)
    evicted: tuple[str, ...] = ()
    serving_changed: bool = False
    rolled_back: str | None = None  # the version traffic was taken from by a rollback
    result: Any = None

    def move(
        self,
        record: VersionRecord,
        target: DeploymentState,
        now: float,
        *,
        reason: str = "",
        **changes: Any,
    ) -> VersionRecord:
        """Check and record ``record -> target``; return the moved record (not yet in ``state``)."""
        check_transition(record.version_id, record.state, target, self.action)
        self._audit(record, target.value, now, reason)
        return record.moved(target, now, **changes)

    def note(self, record: VersionRecord, now: float, reason: str) -> None:
        """Record a step that changes the rollout but not the version's state (a stage, a hold)."""
        self._audit(record, record.state.value, now, reason)

    def _audit(self, record: VersionRecord, to_state: str, now: float, reason: str) -> None:
        self.audit_as(self.action, record, to_state, now, reason)

    def audit_as(self, action: str, record: VersionRecord, to_state: str, now: float, reason: str) -> None:
        """Append an audit entry for ``record`` (its current state -> ``to_state``)."""
        self.audit.append(
            AuditEntry(
                at=now,
                action=action,
                version_id=record.version_id,
                from_state=record.state.value,
                to_state=to_state,
                actor=self.actor,
                reason=reason,
                strategy=record.strategy.kind,
            )
        )

    def put(self, *records: VersionRecord, **state_changes: Any) -> None:
        """Put moved records (and other field changes) into the new state."""
        versions = self.state.with_versions(*records)
        self.state = replace(self.state, versions=MappingProxyType(versions), **state_changes)

    def event(self, name: str, **fields: Any) -> None:
        """Add a structured log event, emitted after the change is committed."""
        self.events.append((name, {"actor": self.actor, **fields}))


def _get(state: ControlState, version_id: str) -> VersionRecord:
    record = state.versions.get(version_id)
    if record is None:
        raise VersionNotFoundError(version_id, list(state.versions)[-5:])
    return record


def prepare(state: ControlState, record: VersionRecord, bundle_json: str, now: float, max_history: int) -> Change:
    """Add a new STAGED version (its record already built, its seq equal to ``state.next_seq``).

    A scheduled version beyond :data:`MAX_PENDING_SCHEDULED` pending ones is refused.
    """
    if record.strategy.activates_at() is not None and len(pending_scheduled(state)) >= MAX_PENDING_SCHEDULED:
        raise DeploymentError(
            f"cannot schedule {record.bundle_id}@{record.bundle_version}: {MAX_PENDING_SCHEDULED} scheduled versions "
            f"are already pending (the limit is {MAX_PENDING_SCHEDULED}); cancel some first"
        )
    change = Change(state, "prepare", record.deployed_by, bundles={record.version_id: bundle_json})
    preparing = replace(record, state=S.PREPARING)
    signer = record.signature.get("signer") if record.signature is not None else None  # D25: who signed it
    why = f"bundle {record.bundle_id}@{record.bundle_version}" + (f", signed by {signer}" if signer else "")
    staged = change.move(preparing, S.STAGED, now, reason=why)
    change.put(staged, next_seq=state.next_seq + 1)
    change.event(
        "deployment.prepared",
        version_id=record.version_id,
        strategy=record.strategy.kind,
        bundle_id=record.bundle_id,
        bundle_version=record.bundle_version,
        digest=record.digest,
        to_state=S.STAGED.value,
        **({"signer": signer} if signer else {}),
    )
    change.result = record.version_id
    evict(change, max_history, now, keep=record.version_id)
    return change


def activate(
    state: ControlState,
    version_id: str,
    now: float,
    actor: str,
    *,
    supersede: bool = False,
    max_history: int = 10,
    early: bool = False,
    progress_deadline: tuple[float, bool] | None = None,
    reason: str = "",
) -> Change:
    """Start serving a STAGED version by its strategy; ``early`` brings a scheduled one forward.

    ``progress_deadline`` is ``(seconds, abort)`` for a rollout it starts (:mod:`rule_engine.control.lifecycle`).
    """
    record = _get(state, version_id)
    change = Change(state, "activate", actor)
    if record.state is not S.STAGED:
        if record.state in (S.ACTIVE, S.ROLLING_OUT):
            raise InvalidTransitionError(f"cannot activate {version_id!r}: it is already {record.state.value}")
        check_transition(version_id, record.state, S.ACTIVE, "activate")
    strategy = record.strategy
    not_before = strategy.activates_at()
    if not_before is not None and now < not_before and not early:
        raise ActivationTimeNotReachedError(version_id, not_before, now)
    if state.rollout is not None:
        if not supersede:
            raise RolloutInProgressError(state.rollout.candidate, version_id)
        _abort_rollout(change, now, f"superseded by {version_id}")
    stable = change.state.active
    shadowed = stable is not None and shadow_options(strategy) is not None  # a shadow phase first (shadowing.py)
    first_share = 0 if shadowed else strategy.first_share_bp()
    if stable is None or first_share is None or first_share >= BASIS_POINTS:
        why = "" if stable is not None or first_share is None else "no stable version to compare with: "
        early_note = f"brought forward from {strategy.describe()}; " if early and not_before is not None else ""
        make_active(change, record, now, reason=_why(reason, f"{early_note}{why}{strategy.describe()}"))
    else:
        if record.state is not S.STAGED:  # a retained version comes back as a canary only through undo
            why = "only a staged version starts a rollout (undo(to=...) brings a retained version back)"
            raise InvalidTransitionError(f"cannot activate {version_id!r}: it is {record.state.value}; {why}")
        secs, abort = progress_deadline if progress_deadline is not None else (None, False)
        rollout = first_stage(
            strategy.kind,
            version_id,
            stable,
            first_share,
            now,
            progress_deadline_secs=secs,
            progress_deadline_abort=abort,
            phase=SHADOW if shadowed else None,
        )
        start_rollout(change, record, rollout, now, reason=_why(reason, strategy.describe()))
    evict(change, max_history, now)
    change.result = version_id
    return change


def _why(reason: str, what: str) -> str:
    """The audit reason: the operator's ``reason`` (when given) before what happened."""
    return f"{reason}: {what}" if reason else what


def first_stage(kind: str, candidate: str, stable: str, share_bp: int, now: float, **options: Any) -> Rollout:
    """A rollout of ``candidate`` against ``stable`` at its first stage, salted by the candidate's id."""
    return Rollout(
        kind=kind,
        candidate=candidate,
        stable=stable,
        share_bp=share_bp,
        stage_index=0,
        started_at=now,
        stage_started_at=now,
        salt=candidate,
        algorithm=ALGORITHM_VERSION,
        **options,
    )


def start_rollout(change: Change, record: VersionRecord, rollout: Rollout, now: float, *, reason: str) -> None:
    """``record`` becomes the candidate of ``rollout`` (its first stage) against the active version."""
    moved = change.move(record, S.ROLLING_OUT, now, reason=reason, activated_at=now, held=None)
    change.put(moved, rollout=rollout)
    change.serving_changed = True
    change.event(
        "rollout.started",
        version_id=record.version_id,
        stable_version_id=rollout.stable,
        strategy=rollout.kind,
        percentage=rollout.share_bp / 100,
        from_state=record.state.value,
        to_state=S.ROLLING_OUT.value,
    )


def make_active(change: Change, record: VersionRecord, now: float, *, reason: str) -> None:
    """``record`` takes all traffic; the previous active version is superseded."""
    state = change.state
    previous = state.versions.get(state.active) if state.active else None
    moved = [change.move(record, S.ACTIVE, now, reason=reason, activated_at=record.activated_at or now, held=None)]
    if previous is not None and previous.version_id != record.version_id:
        moved.append(
            change.move(
                previous,
                S.SUPERSEDED,
                now,
                reason=f"replaced by {record.version_id}",
                finished_at=now,
            )
        )
    lineage = (*tuple(v for v in state.lineage if v != record.version_id), record.version_id)
    change.put(*moved, active=record.version_id, rollout=None, lineage=lineage)
    change.serving_changed = True
    change.event(
        "deployment.activated",
        version_id=record.version_id,
        previous_version_id=previous.version_id if previous else None,
        strategy=record.strategy.kind,
        from_state=record.state.value,
        to_state=S.ACTIVE.value,
        reason=reason,
    )


def _abort_rollout(change: Change, now: float, reason: str, **event_fields: Any) -> None:
    rollout = change.state.rollout
    assert rollout is not None
    candidate = change.state.versions[rollout.candidate]
    rolling_back = change.move(candidate, S.ROLLING_BACK, now, reason=reason)
    rolled_back = change.move(rolling_back, S.ROLLED_BACK, now, reason=reason, finished_at=now, failure_reason=reason)
    change.put(rolled_back, rollout=None, last_rollback_at=now)
    change.serving_changed = True
    change.rolled_back = candidate.version_id
    change.event(
        "rollback.completed",
        version_id=candidate.version_id,
        serving_version_id=change.state.active,
        strategy=candidate.strategy.kind,
        from_state=candidate.state.value,
        to_state=S.ROLLED_BACK.value,
        reason=reason,
        **event_fields,
    )


def advance(
    state: ControlState, now: float, actor: str, *, healthy: bool | None, max_history: int = 10, reason: str = ""
) -> Change:
    """Move the canary to its next stage if the current one has lasted its duration.

    ``healthy`` is the candidate's verdict: False holds the stage; the caller decides whether None
    (no verdict yet) may advance. ``change.result`` is True when the canary moved.
    """
    rollout = _rollout_for(state, "advance", finishes_by_itself=True)
    record = state.versions[rollout.candidate]
    strategy = record.strategy
    change = Change(state, "advance", actor, result=False)
    if rollout.paused_at is not None or in_shadow(rollout):  # paused; or the shadow verdict moves it on
        return change
    if not strategy.step_is_over(now, rollout.started_at, rollout.stage_started_at) or healthy is False:
        return change
    next_index = rollout.stage_index + 1
    share = strategy.next_share_bp(rollout.stage_index)
    stages = len(strategy.stage_percentages())
    change.result = True
    if share is None or share >= BASIS_POINTS:
        make_active(change, record, now, reason=f"{strategy.kind} completed after {stages} stages")
        evict(change, max_history, now)
        return change
    change.note(
        record,
        now,
        f"stage {next_index + 1} of {stages}: {rollout.share_bp / 100:g}% -> {share / 100:g}%",
    )
    moved = replace(rollout, stage_index=next_index, share_bp=share, stage_started_at=now, deadline_exceeded_at=None)
    change.put(rollout=replace(moved, held=None, gate_hold=None))
    change.serving_changed = True
    change.event(
        "rollout.advanced",
        version_id=record.version_id,
        strategy=strategy.kind,
        stage=next_index + 1,
        stages=stages,
        from_percentage=rollout.share_bp / 100,
        percentage=share / 100,
    )
    return change


def promote(state: ControlState, now: float, actor: str, *, max_history: int = 10, reason: str = "") -> Change:
    """Finish the canary now: the candidate takes all traffic."""
    rollout = _rollout_for(state, "promote", finishes_by_itself=True)
    change = Change(state, "promote", actor)
    make_active(change, state.versions[rollout.candidate], now, reason=_why(reason, f"promoted by {actor}"))
    evict(change, max_history, now)
    change.result = rollout.candidate
    return change


def conclude(
    state: ControlState, winner: str, now: float, actor: str, *, max_history: int = 10, reason: str = ""
) -> Change:
    """End an A/B test: ``winner`` (A, the stable version, or B, the candidate) serves all traffic."""
    rollout = _rollout_for(state, "conclude", finishes_by_itself=False)
    if winner not in (rollout.stable, rollout.candidate):
        _get(state, winner)  # unknown ids say "Version not found"
        raise InvalidTransitionError(
            f"{winner!r} is not in the A/B test; the winner is {rollout.stable!r} (A) or {rollout.candidate!r} (B)"
        )
    change = Change(state, "conclude", actor, result=winner)
    if winner == rollout.candidate:
        make_active(
            change, state.versions[winner], now, reason=_why(reason, f"won the A/B test against {rollout.stable}")
        )
    else:
        _abort_rollout(change, now, _why(reason, f"lost the A/B test to {rollout.stable}"))
    change.event(
        "experiment.concluded",
        version_id=rollout.candidate,
        winner=winner,
        stable_version_id=rollout.stable,
    )
    evict(change, max_history, now)
    return change


def end_experiment(state: ControlState, now: float, actor: str) -> Change | None:
    """Mark an A/B test whose duration has passed as ended (the split stays until it is concluded)."""
    rollout = state.rollout
    if rollout is None or rollout.finishes_by_itself or rollout.ended_at is not None:
        return None
    strategy = state.versions[rollout.candidate].strategy
    if not strategy.step_is_over(now, rollout.started_at, rollout.stage_started_at):
        return None
    change = Change(state, "end-experiment", actor)
    duration = now - rollout.started_at
    change.note(
        state.versions[rollout.candidate],
        now,
        f"test duration of {strategy.step_duration_secs(rollout.stage_index) or duration:g}s has passed; "
        "the split stays until a winner is chosen",
    )
    change.put(rollout=replace(rollout, ended_at=now))
    change.event(
        "experiment.ended",
        version_id=rollout.candidate,
        stable_version_id=rollout.stable,
        duration_secs=duration,
    )
    return change


def hold(state: ControlState, now: float, actor: str, *, candidate: str, reason: str) -> Change:
    """Mark the candidate as held for a person (manual mode, found unhealthy); stored, so it survives restarts."""
    rollout = state.rollout
    change = Change(state, "hold", actor)
    if rollout is None or rollout.candidate != candidate or rollout.held is not None:
        return change
    change.note(state.versions[candidate], now, f"held for a person: {reason}")
    change.put(rollout=replace(rollout, held=reason))
    change.event("rollout.held", version_id=candidate, strategy=rollout.kind, reason=reason)
    return change


def rollback(
    state: ControlState, now: float, actor: str, *, reason: str, automatic: bool = False, max_history: int = 10
) -> Change:
    """Return all traffic to the stable version (during a rollout) or to the previous active one (evicts nothing)."""
    change = Change(state, "rollback", actor)
    kind = "automatic" if automatic else "manual"
    if state.rollout is not None:
        _abort_rollout(change, now, reason, trigger=kind)
        change.result = state.rollout.stable
        return change
    if state.active is None:
        raise NoPreviousVersionError("no version is active")
    target_id = state.rollback_target
    if target_id is None or target_id not in state.versions:
        raise NoPreviousVersionError(f"{state.active!r} is the only version in the history")
    current = state.versions[state.active]
    target = state.versions[target_id]
    rolling_back = change.move(current, S.ROLLING_BACK, now, reason=reason)
    rolled_back = change.move(rolling_back, S.ROLLED_BACK, now, reason=reason, finished_at=now, failure_reason=reason)
    restored = change.move(target, S.ACTIVE, now, reason=f"rollback from {current.version_id}", finished_at=None)
    change.put(rolled_back, restored, active=target_id, lineage=state.lineage[:-1], last_rollback_at=now)
    change.serving_changed = True
    change.rolled_back = current.version_id
    change.event(
        "rollback.completed",
        version_id=current.version_id,
        serving_version_id=target_id,
        strategy=current.strategy.kind,
        from_state=current.state.value,
        to_state=S.ROLLED_BACK.value,
        reason=reason,
        trigger=kind,
    )
    change.result = target_id
    return change


def pending_scheduled(state: ControlState) -> list[VersionRecord]:
    """STAGED scheduled versions (due or not), earliest first."""
    return [r for r in scheduled_due(state, float("inf")) if r.strategy.activates_at() is not None]


def scheduled_due(state: ControlState, now: float) -> list[VersionRecord]:
    """STAGED scheduled versions whose time has come, earliest first."""
    due = [(at, r.seq, r) for r in state.versions.values() if r.state is S.STAGED and (at := _due_at(r)) <= now]
    return [r for _, _, r in sorted(due, key=lambda item: item[:2])]


def _due_at(record: VersionRecord) -> float:
    """When the controller activates ``record`` by itself (infinity: never, a person does)."""
    at = record.strategy.activates_at()
    return float("inf") if at is None else at


def _rollout_for(state: ControlState, action: str, *, finishes_by_itself: bool) -> Rollout:
    """The rollout in progress if ``action`` applies to it: advance/promote to one that finishes by
    itself (a canary), conclude to one that waits for a person (an A/B test)."""
    rollout = state.rollout
    if rollout is None:
        raise InvalidTransitionError(f"cannot {action}: no rollout is in progress")
    if rollout.finishes_by_itself is not finishes_by_itself:
        hint = "use advance_rollout() or promote()" if rollout.finishes_by_itself else "use conclude_experiment(winner)"
        raise InvalidTransitionError(f"cannot {action}: {rollout.candidate!r} is in a {rollout.kind}; {hint}")
    return rollout


def protected(state: ControlState) -> set[str]:
    """Versions history never evicts: what serves, what is rolling out, the rollback target, pending schedules."""
    keep = {v for v in (state.active, state.rollback_target) if v}
    if state.rollout is not None:
        keep |= {state.rollout.candidate, state.rollout.stable}
    keep |= {r.version_id for r in pending_scheduled(state)}
    return keep


def evict(change: Change, max_history: int, now: float, keep: str | None = None) -> None:
    """Drop the oldest unprotected versions until at most ``max_history`` remain."""
    state = change.state
    excess = len(state.versions) - max_history
    if excess <= 0:
        return
    keep_ids = protected(state) | ({keep} if keep else set())
    victims = [v for v in state.versions if v not in keep_ids][:excess]
    if not victims:
        return
    for victim in victims:
        record = state.versions[victim]
        change.audit_as("evict", record, "evicted", now, f"history is limited to {max_history} versions")
        change.event("history.evicted", version_id=victim, state=record.state.value, max_history=max_history)
    versions = state.with_versions(drop=tuple(victims))
    lineage = tuple(v for v in state.lineage if v not in victims)
    change.state = replace(state, versions=MappingProxyType(versions), lineage=lineage)
    change.evicted = change.evicted + tuple(victims)
