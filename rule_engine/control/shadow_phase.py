"""Planners that end a rollout's shadow phase (pure): proceed to the first stage, or abort.

:func:`end_shadow` is planned by the controller from the stored state once the shadow verdict is
``proceed`` or ``abort`` (see :mod:`rule_engine.control.shadowing`); like every planner it checks
first and returns a :class:`~rule_engine.control.transitions.Change`, or None when the state moved on
(another process already ended the phase, the rollout was aborted or superseded).

- ``proceed`` on a canary: the rollout leaves the phase at its first stage (the stage clock and the
  fleet's convergence start anew); on a blue-green: the candidate becomes active.
- ``abort``: the rollout is aborted (the candidate is ABORTED, ``retry`` starts the shadow phase
  again), ``trigger="shadow"`` in the ``rollout.aborted`` event.
"""

from __future__ import annotations

from dataclasses import replace

from rule_engine.control import lifecycle
from rule_engine.control.records import ControlState
from rule_engine.control.shadowing import in_shadow
from rule_engine.control.transitions import Change, evict, make_active
from rule_engine.serving.routing import BASIS_POINTS

__all__ = ["end_shadow"]


def end_shadow(
    state: ControlState, now: float, actor: str, *, candidate: str, action: str, reason: str, max_history: int = 10
) -> Change | None:
    """End ``candidate``'s shadow phase by ``action`` (``proceed`` or ``abort``); None if it is not in one."""
    rollout = state.rollout
    if not in_shadow(rollout) or rollout is None or rollout.candidate != candidate:
        return None
    record = state.versions[candidate]
    why = f"shadow: {reason}"
    if action == "abort":
        return lifecycle.abort(state, now, actor, reason=why, max_history=max_history, trigger="shadow")
    if action != "proceed" or rollout.paused_at is not None:  # paused: nothing moves it on
        return None
    change = Change(state, "shadow-proceed", actor, result=True)
    strategy = record.strategy
    first = strategy.first_share_bp()
    if first is None or first >= BASIS_POINTS:
        make_active(change, record, now, reason=f"{why}; {strategy.kind}")
        evict(change, max_history, now)
    else:
        change.note(record, now, f"{why}; stage 1 of {len(strategy.stage_percentages())}: 0% -> {first / 100:g}%")
        started = replace(
            rollout,
            phase=None,
            share_bp=first,
            stage_index=0,
            stage_started_at=now,
            held=None,
            deadline_exceeded_at=None,
            converged_at=None,
            converged_stage=None,
        )
        change.put(rollout=started)
        change.serving_changed = True
    change.event(
        "shadow.proceeded",
        version_id=candidate,
        stable_version_id=rollout.stable,
        strategy=strategy.kind,
        percentage=(first or BASIS_POINTS) / 100,
        reason=reason,
    )
    return change
