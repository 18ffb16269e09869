"""Subscribers to deployment changes: before-swap, after-swap, after-change, on-error, on-rollback, on-hold.

Order of one operation: validate, run before-swap hooks, persist, publish the new snapshot, emit the
log event, then (after the manager's lock is released) run after-swap (what serves changed),
after-change (any committed change, a pause or a resume too) and on-rollback hooks. A hook that
raises is logged and never undoes or blocks a transition. on-error hooks run when a control
operation fails. on-hold hooks run when the controller sees the rollout's hold begin, change cause
or end (once per change, never once per tick; ``DeploymentEvent.cause`` says which hold).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rule_engine.logs import get_logger

__all__ = ["DeploymentEvent", "HookPoint", "Hooks"]

_log = get_logger()


class HookPoint(StrEnum):
    """When a hook runs."""

    BEFORE_SWAP = "before_swap"
    AFTER_SWAP = "after_swap"
    AFTER_CHANGE = "after_change"
    ON_ERROR = "on_error"
    ON_ROLLBACK = "on_rollback"
    ON_HOLD = "on_hold"


@dataclass(frozen=True, slots=True)
class DeploymentEvent:
    """What a hook is told: the operation, the versions serving before and after, who and why."""

    action: str
    version_id: str | None
    actor: str
    serving_before: tuple[str | None, str | None, float]  # (stable, candidate, candidate percent)
    serving_after: tuple[str | None, str | None, float]
    reason: str = ""
    error: BaseException | None = None
    automatic: bool = False
    #: on-hold events (``action`` ``held`` or ``released``): what holds the rollout, or held it until now
    #: (``paused``, ``health``, ``fleet``, ``gate``, ``shadow``, ``progress_deadline``; deployment/holds.py).
    cause: str = ""


Hook = Callable[[DeploymentEvent], Any]


class Hooks:
    """A registry of hooks per :class:`HookPoint`; safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: dict[HookPoint, tuple[Hook, ...]] = dict.fromkeys(HookPoint, ())

    def subscribe(self, point: HookPoint | str, hook: Hook) -> Callable[[], None]:
        """Call ``hook`` at ``point``; returns a function that unsubscribes it."""
        where = HookPoint(point)
        with self._lock:
            self._hooks[where] = (*self._hooks[where], hook)

        def unsubscribe() -> None:
            with self._lock:
                self._hooks[where] = tuple(h for h in self._hooks[where] if h is not hook)

        return unsubscribe

    def run(self, point: HookPoint, event: DeploymentEvent) -> None:
        """Call every hook at ``point``; log, and swallow, what they raise."""
        for hook in self._hooks[point]:
            try:
                hook(event)
            except Exception as exc:
                _log.warning(
                    "hook.failed",
                    hook_point=point.value,
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    action=event.action,
                    version_id=event.version_id,
                    error=f"{type(exc).__name__}: {exc}",
                )
