"""Committer: the one path every control-plane operation takes.

Order: plan the change from the stored state (a pure function; a refused operation raises before
anything changes), run before-swap hooks (once per operation, for the first plan that changes what
serves: a retry after a conflict re-plans without running them again), commit against the revision
the plan was made from (another process's commit makes this one re-plan from the fresh state, which
is what makes each time-driven step happen exactly once across processes), publish the new snapshot,
emit the log events; then, outside the lock, run after-swap, after-change and on-rollback hooks. A hook that
raises is logged and never undoes a transition. Once the store has committed, the operation has
succeeded: nothing after the commit reads the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rule_engine.clock import Clock
from rule_engine.control.records import ControlState
from rule_engine.control.transitions import Change
from rule_engine.deployment.follower import run_follow_hooks
from rule_engine.deployment.hooks import DeploymentEvent, HookPoint, Hooks
from rule_engine.deployment.publisher import BundleGone, Publisher, Serving, serving_of_state
from rule_engine.errors import ConflictError, RuleEngineError
from rule_engine.health.ledger import HealthLedger
from rule_engine.logs import get_logger

__all__ = ["Committer", "Plan", "nothing_to_do"]

Plan = Callable[[ControlState, float], Change]
_log = get_logger()


def nothing_to_do(state: ControlState) -> Change:
    """A plan that changes nothing (the step was done already, maybe by another process)."""
    return Change(state, "noop", "controller")


class Committer:
    """Plans, commits (retrying on conflicts), publishes and logs; runs the hooks around it."""

    def __init__(
        self,
        lock: threading.RLock,
        clock: Clock,
        hooks: Hooks,
        publisher: Publisher,
        ledger: HealthLedger,
        max_retries: Callable[[], int],
    ) -> None:
        self.lock = lock
        self._clock = clock
        self.hooks = hooks
        self._publisher = publisher
        self._ledger = ledger
        self._max_retries = max_retries

    def apply(self, plan: Plan, action: str, actor: str, version_id: str | None = None) -> Change:
        """Run ``plan`` against the stored state and commit it; returns the committed change."""
        store = self._publisher.store
        before: Serving = self._publisher.serving()
        hooked = False
        adopted: tuple[ControlState, ControlState, Serving, Serving] | None = None  # another process's change
        try:
            with self.lock:
                retries = self._max_retries()
                for attempt in range(retries):
                    state = store.load()
                    if state.revision != self._publisher.state.revision:
                        old, served = self._publisher.state, self._publisher.serving()
                        try:
                            self._publisher.publish(state)
                        except BundleGone:
                            continue  # that state is already outdated: read it again
                        first = adopted or (old, state, served, served)
                        adopted = (first[0], state, first[2], self._publisher.serving())
                    now = self._clock.now()
                    change = plan(state, now)
                    if change.state is state:
                        break
                    before = self._publisher.serving()
                    if change.serving_changed and not hooked:
                        hooked = True
                        self.hooks.run(HookPoint.BEFORE_SWAP, _event(change, before, serving_of_state(change.state)))
                    try:
                        committed = store.commit(
                            state.revision,
                            change.state,
                            bundles=change.bundles,
                            audit=change.audit,
                            evicted=change.evicted,
                        )
                    except ConflictError:
                        if attempt + 1 == retries:
                            raise
                        continue
                    change.state = committed
                    self._ledger.keep_evicted(change.evicted, now)
                    self._publish_committed(committed)
                    for name, fields in change.events:
                        _log.info(name, **fields)
                    break
        except RuleEngineError as exc:
            serving = self._publisher.serving()
            self.hooks.run(
                HookPoint.ON_ERROR, DeploymentEvent(action, version_id, actor, serving, serving, str(exc), exc)
            )
            raise
        if adopted is not None and adopted[2] != adopted[3]:  # what serves changed under us: tell the hooks
            run_follow_hooks(self.hooks, self._publisher.store, *adopted)
        after = self._publisher.serving()
        if change.serving_changed:
            self.hooks.run(HookPoint.AFTER_SWAP, _event(change, before, after))
        if change.audit:  # every committed change (a pause or a resume too), for notifications
            self.hooks.run(HookPoint.AFTER_CHANGE, _event(change, before, after))
        if change.rolled_back is not None:
            self.hooks.run(HookPoint.ON_ROLLBACK, _event(change, before, after))
        return change

    def _publish_committed(self, committed: ControlState) -> None:
        """Publish what was committed. A failure here does not undo the commit: followers catch up."""
        try:
            self._publisher.publish(committed)
        except RuleEngineError as exc:
            _log.warning("publish.deferred", revision=committed.revision, error=f"{type(exc).__name__}: {exc}")


def _event(change: Change, before: Serving, after: Serving) -> DeploymentEvent:
    version_id = change.audit[0].version_id if change.audit else None
    reason = change.audit[-1].reason if change.audit else ""
    automatic = any(fields.get("trigger") == "automatic" for _, fields in change.events)
    return DeploymentEvent(change.action, version_id, change.actor, before, after, reason, None, automatic)
