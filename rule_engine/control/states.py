"""Deployment states and the transitions allowed between them (the state machine is a table).

At rest a version is STAGED (prepared, not serving), ROLLING_OUT (a canary or A/B candidate taking
part of the traffic), ACTIVE (serving all traffic outside a rollout), SUPERSEDED (was active, replaced
by a newer version; kept as a rollback target and an ``undo`` target), ABORTED (its rollout was aborted:
traffic is back on the stable version; not terminal, ``retry`` restarts the rollout), CANCELLED (a staged
or scheduled version that will never serve), ROLLED_BACK or FAILED (terminal). PREPARING and
ROLLING_BACK are the transient phases of prepare and rollback: they appear in the audit trail and in
hook payloads, never as the state of a stored version.
"""

from __future__ import annotations

from enum import StrEnum

from rule_engine.errors import InvalidTransitionError

__all__ = ["TRANSITIONS", "DeploymentState", "check_transition"]


class DeploymentState(StrEnum):
    """Where a deployed version is in its life."""

    PREPARING = "preparing"
    STAGED = "staged"
    ROLLING_OUT = "rolling_out"
    ACTIVE = "active"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


S = DeploymentState
TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    S.PREPARING: frozenset({S.STAGED, S.FAILED}),
    S.STAGED: frozenset({S.ROLLING_OUT, S.ACTIVE, S.FAILED, S.CANCELLED}),
    S.ROLLING_OUT: frozenset({S.ACTIVE, S.ROLLING_BACK, S.ROLLED_BACK, S.SUPERSEDED, S.ABORTED}),
    S.ACTIVE: frozenset({S.SUPERSEDED, S.ROLLING_BACK, S.ROLLED_BACK}),
    S.ROLLING_BACK: frozenset({S.ROLLED_BACK}),
    S.SUPERSEDED: frozenset({S.ACTIVE, S.ROLLING_OUT}),  # undo: at once, or as a canary back
    S.ABORTED: frozenset({S.ROLLING_OUT}),  # retry, same salt
    S.ROLLED_BACK: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


def check_transition(version_id: str, current: DeploymentState, target: DeploymentState, action: str) -> None:
    """Raise :class:`InvalidTransitionError` unless ``current -> target`` is allowed."""
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (terminal state)"
        raise InvalidTransitionError(
            f"cannot {action} {version_id!r}: it is {current.value}, and {current.value} -> "
            f"{target.value} is not allowed (allowed from {current.value}: {allowed})"
        )
