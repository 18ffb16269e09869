"""Follower: picks up what other processes commit to the store, and says when it cannot.

It compares the store's revision with the last published one and republishes when it moved. When
the store cannot be read it keeps serving the last good snapshot and reports itself *stale* with the
reason, logging ``follower.stale`` once and ``follower.recovered`` once, not per retry.

When what this process serves changes because of what another process committed, the swap hooks
run here too (after the lock is released): ``after_swap`` with a :class:`DeploymentEvent` whose
action is ``"follow"``, and ``on_rollback`` when a version that served here was rolled back. So an
evaluator following the store hears of a deploy made by the CLI.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rule_engine.clock import Clock
from rule_engine.control.records import ControlState
from rule_engine.control.states import DeploymentState
from rule_engine.deployment.hooks import DeploymentEvent, HookPoint, Hooks
from rule_engine.deployment.publisher import Publisher, Serving
from rule_engine.errors import RuleEngineError, StoreError
from rule_engine.health.ledger import HealthLedger
from rule_engine.logs import get_logger
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import StoreMark, check_continuity

__all__ = ["Follower", "run_follow_hooks"]

_log = get_logger()


class Follower:
    """One manager's view of the store's revision, and its staleness."""

    def __init__(self, lock: threading.RLock, publisher: Publisher, hooks: Hooks | None = None) -> None:
        self._lock = lock
        self._publisher = publisher
        self._hooks = hooks
        self.stale_reason: str | None = None
        self.identity: str | None = None  # the store this manager serves from, once seen

    def load(self) -> None:
        """Publish the stored state and note which store it came from (continuity is checked against it)."""
        with self._lock:
            self._publisher.publish_latest()
            self.identity = self._publisher.store.identity()

    def follow_once(self) -> bool:
        """Publish the stored state if its revision moved; True when something changed.

        When what serves changed, runs the swap hooks (outside the lock; see the module docstring).
        """
        store = self._publisher.store
        try:
            mark = store.mark()
            if self.identity is None:
                self.identity = mark.identity
            reason = check_continuity(StoreMark(self.identity, self._publisher.state.revision), mark)
            if reason is not None:
                raise StoreError(reason)  # never adopt another store, or an older copy: stay stale on the last good one
            revision = mark.revision
            if revision == self._publisher.state.revision:
                self._recovered(revision)
                return False
            with self._lock:
                if store.revision() == self._publisher.state.revision:
                    return False
                old_state, before = self._publisher.state, self._publisher.serving()
                self._publisher.publish_latest()
                new_state, after = self._publisher.state, self._publisher.serving()
        except (RuleEngineError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self.stale_reason is None:
                _log.warning("follower.stale", error=reason, revision=self._publisher.state.revision)
            self.stale_reason = reason
            return False
        self._recovered(new_state.revision)
        _log.debug("follower.updated", revision=new_state.revision, active_version_id=new_state.active)
        if self._hooks is not None and before != after:
            run_follow_hooks(self._hooks, self._publisher.store, old_state, new_state, before, after)
        return True

    def step_with_flush(self, ledger: HealthLedger, clock: Clock, flush_interval: float) -> Callable[[], None]:
        """A background step: follow once, and flush this process's health counts every ``flush_interval``."""
        last_flush = [clock.now()]

        def step() -> None:
            self.follow_once()
            now = clock.now()
            if now - last_flush[0] >= flush_interval:
                last_flush[0] = now
                with self._lock:
                    ledger.flush(now)

        return step

    def _recovered(self, revision: int) -> None:
        if self.stale_reason is not None:
            _log.info("follower.recovered", revision=revision)
            self.stale_reason = None


def run_follow_hooks(
    hooks: Hooks, store: StateStore, old: ControlState, new: ControlState, before: Serving, after: Serving
) -> None:
    """Run the swap hooks of a change this process adopted from the store (call outside the lock).

    ``after_swap`` with action ``"follow"``; ``on_rollback`` for each version that served here
    (``before``) and is rolled back in ``new`` (``automatic`` when the controller's audit entry says so).
    """
    reason = f"followed revision {old.revision} -> {new.revision} from the store"
    version_id: str | None
    if after[1] is not None:
        version_id = after[1]  # a rollout started or moved
    elif after[0] != before[0]:
        version_id = after[0]  # a new stable version
    else:
        version_id = before[1]  # a rollout ended
    hooks.run(HookPoint.AFTER_SWAP, DeploymentEvent("follow", version_id, "follower", before, after, reason))
    for served in dict.fromkeys(v for v in before[:2] if v is not None and v not in after[:2]):
        record = new.versions.get(served)
        if record is None or record.state is not DeploymentState.ROLLED_BACK:
            continue
        why = record.failure_reason or reason
        event = DeploymentEvent("follow", served, "follower", before, after, why, None, _by_controller(store, served))
        hooks.run(HookPoint.ON_ROLLBACK, event)


def _by_controller(store: StateStore, version_id: str) -> bool:
    """Whether the last audited step of ``version_id`` was the controller's (an automatic rollback)."""
    try:
        entries = store.audit_log(version_id, limit=1)
    except (RuleEngineError, OSError, ValueError):
        return False
    return bool(entries) and entries[-1].actor == "controller"
