"""Why a rollout holds, by cause, and when that changes: what the controller tells on-hold hooks.

A rollout holds for one of these causes (the most pressing first): ``paused`` (a person paused it),
``health`` (unhealthy and waiting for a person, or no verdict yet: too little traffic in the window),
``fleet`` (instances do not serve the stage yet), ``gate`` (a gate refused or did not answer),
``progress_deadline`` (no verdict within the rollout's progress deadline). Waiting for a stage's
duration to pass is not a hold. A scheduled version whose activation a gate refuses holds too
(cause ``gate``, stage 0).

:class:`HoldWatch` remembers the hold it last reported and returns an event only when a hold
begins, when its cause changes, or when the rollout moves on to another stage still held, and a
``released`` event when the same rollout no longer holds; never one per tick, and not when only the
figures in the reason change. A rollout that ends clears it silently.
"""

from __future__ import annotations

import threading

from rule_engine.control.status import RolloutStatus
from rule_engine.deployment.hooks import DeploymentEvent

__all__ = ["HOLD_CAUSES", "HoldWatch", "cause_of"]

HOLD_CAUSES = ("paused", "health", "fleet", "gate", "progress_deadline")
Serving = tuple[str | None, str | None, float]


def cause_of(status: RolloutStatus, *, held_for_a_person: bool, step_hold: str | None) -> str | None:
    """The cause of ``status``'s hold; ``step_hold`` is the controller's own (``fleet`` or ``gate``), if any."""
    if status.paused:
        return "paused"
    if status.verdict.healthy is False or held_for_a_person:
        return "health"
    if step_hold is not None:
        return step_hold
    if status.shadow is not None:  # a shadow phase holds until its verdict (control/shadowing.py)
        return "shadow" if status.holding else None
    if status.strategy != "canary" or status.verdict.healthy is True:
        return None
    return "progress_deadline" if status.deadline_exceeded_at is not None else "health"


class HoldWatch:
    """The hold last reported, and the event to report next (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[str, int, str] | None = None  # (candidate, stage, cause)

    def seen(
        self, version_id: str | None, stage: int, cause: str | None, reason: str, serving: Serving
    ) -> DeploymentEvent | None:
        """Record the hold of ``version_id`` (the candidate, or a scheduled version; None: nothing in play) now.

        Returns the on-hold event to run, or None when nothing changed.
        """
        with self._lock:
            last = self._last
            if version_id is None:
                self._last = None
                return None
            key = (version_id, stage, cause) if cause is not None else None
            if key == last:
                return None
            self._last = key
        if key is not None:
            return DeploymentEvent("held", version_id, "controller", serving, serving, reason, cause=key[2])
        if last is None or last[0] != version_id:
            return None
        return DeploymentEvent("released", version_id, "controller", serving, serving, "", cause=last[2])
