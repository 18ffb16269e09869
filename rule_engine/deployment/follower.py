"""Follower: picks up what other processes commit to the store, and says when it cannot.

It compares the store's revision with the last published one and republishes when it moved. When
the store cannot be read it keeps serving the last good snapshot and reports itself *stale* with the
reason, logging ``follower.stale`` once and ``follower.recovered`` once, not per retry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from rule_engine.clock import Clock
from rule_engine.deployment.publisher import Publisher
from rule_engine.errors import RuleEngineError, StoreError
from rule_engine.health.ledger import HealthLedger
from rule_engine.logs import get_logger
from rule_engine.stores.integrity import StoreMark, check_continuity

__all__ = ["Follower"]

_log = get_logger()


class Follower:
    """One manager's view of the store's revision, and its staleness."""

    def __init__(self, lock: threading.RLock, publisher: Publisher) -> None:
        self._lock = lock
        self._publisher = publisher
        self.stale_reason: str | None = None
        self.identity: str | None = None  # the store this manager serves from, once seen

    def load(self) -> None:
        """Publish the stored state and note which store it came from (continuity is checked against it)."""
        with self._lock:
            self._publisher.publish_latest()
            self.identity = self._publisher.store.identity()

    def follow_once(self) -> bool:
        """Publish the stored state if its revision moved; True when something changed."""
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
                self._publisher.publish_latest()
        except (RuleEngineError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if self.stale_reason is None:
                _log.warning("follower.stale", error=reason, revision=self._publisher.state.revision)
            self.stale_reason = reason
            return False
        state = self._publisher.state
        self._recovered(state.revision)
        _log.debug("follower.updated", revision=state.revision, active_version_id=state.active)
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
