"""A gate's hold, stored with the rollout so every process shows it (pure planners, no I/O).

The controller that asks the gate records the hold with :func:`note_gate_hold` once, when it begins
or its reason changes (never per tick: an unchanged hold plans nothing), against the store revision,
so of several controllers one commits and the others find it done. The commit that advances the
stage clears it (control/transitions.py ``advance``); a hold naming another stage than the rollout's
is stale and :func:`gate_hold_reason` ignores it. The hold is not an operation: no audit entry (the
on-hold hooks and the ``rollout.hold_changed`` log event tell it; deployment/holds.py).
"""

from __future__ import annotations

from dataclasses import replace

from rule_engine.control.records import MAX_GATE_HOLD_REASON, ControlState, GateHold, Rollout
from rule_engine.control.transitions import Change

__all__ = ["gate_hold_reason", "note_gate_hold"]


def note_gate_hold(state: ControlState, candidate: str, stage_index: int, reason: str) -> Change | None:
    """Record that a gate holds ``candidate``'s step from ``stage_index`` because of ``reason``.

    None when there is nothing to record: the rollout moved on (another candidate or stage) or the
    same hold is stored already.
    """
    rollout = state.rollout
    if rollout is None or rollout.candidate != candidate or rollout.stage_index != stage_index:
        return None
    hold = GateHold(stage_index, reason[:MAX_GATE_HOLD_REASON])
    if rollout.gate_hold == hold:
        return None
    change = Change(state, "gate-hold", "controller")
    change.put(rollout=replace(rollout, gate_hold=hold))
    change.event("rollout.gate_hold_stored", version_id=candidate, stage=stage_index + 1, reason=hold.reason)
    return change


def gate_hold_reason(rollout: Rollout) -> str | None:
    """The gate's reply holding ``rollout``'s current stage (None: no hold, or a stale one of another stage)."""
    hold = rollout.gate_hold
    return hold.reason if hold is not None and hold.stage_index == rollout.stage_index else None
