"""Follower: picks up what other processes commit to the store, and says when it cannot.

It compares the store's revision with the last published one and republishes when it moved. When
the store cannot be read it keeps serving the last good snapshot and reports itself *stale* with the
reason, logging ``follower.stale`` once and ``follower.recovered`` once, not per retry.

A store that pushes changes (one with ``listen()``, e.g. PostgreSQL's LISTEN/NOTIFY) is followed by
:class:`PushLoop`: its thread waits on the listener instead of sleeping, so a commit is picked up as
soon as the notification arrives; the listener's poll of the revision every :data:`PUSH_POLL` seconds
is the safety net for a lost notification, and the state is re-read after every reconnect. Staleness
then also comes from the *age* of the last successful round trip (a hung server raises nothing): past
:data:`STALE_AFTER` seconds without an answer the follower reports stale, whatever its thread is
blocked on. Reconnects back off exponentially from :data:`BACKOFF_START` to :data:`BACKOFF_CAP`
seconds, with jitter (each wait drawn in ``[d/2, d]``), so a fleet does not reconnect in step.

When what this process serves changes because of what another process committed, the swap hooks
run here too (after the lock is released): ``after_swap`` with a :class:`DeploymentEvent` whose
action is ``"follow"``, and ``on_rollback`` when a version that served here was rolled back. So an
evaluator following the store hears of a deploy made by the CLI.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from rule_engine.clock import Clock
from rule_engine.control.records import ControlState
from rule_engine.control.states import DeploymentState
from rule_engine.deployment.background import BackgroundLoop
from rule_engine.deployment.hooks import DeploymentEvent, HookPoint, Hooks
from rule_engine.deployment.publisher import Publisher, Serving
from rule_engine.errors import RuleEngineError, StoreError
from rule_engine.health.ledger import HealthLedger
from rule_engine.logs import get_logger
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import StoreMark, check_continuity

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_START",
    "MAX_BURST",
    "PUSH_POLL",
    "STALE_AFTER",
    "Follower",
    "Listener",
    "PushLoop",
    "follow_loop",
    "run_follow_hooks",
]

_log = get_logger()

PUSH_POLL = 1.0  # a pushing store's revision is still polled this often (the safety net)
STALE_AFTER = 3.0  # no answer from a pushing store for this long: stale
MAX_BURST = 8  # revisions one follow_once may follow in a row when newer ones were announced meanwhile
BACKOFF_START = 0.05  # first reconnect wait (seconds), doubled per failure ...
BACKOFF_CAP = 2.0  # ... up to this


class Listener(Protocol):
    """What :class:`PushLoop` needs of a store's ``listen()`` (see ``PostgresListener``)."""

    last_via: str

    @property
    def connected(self) -> bool: ...
    def wait_for_change(self, timeout: float, *, poll: bool = True) -> int | None: ...
    def riding(self) -> AbstractContextManager[None]: ...
    def last_round_trip_age(self) -> float | None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class Follower:
    """One manager's view of the store's revision, and its staleness."""

    def __init__(self, lock: threading.RLock, publisher: Publisher, hooks: Hooks | None = None) -> None:
        self._lock = lock
        self._publisher = publisher
        self._hooks = hooks
        self._reason: str | None = None
        self._age: Callable[[], float | None] | None = None  # a pushing store's round-trip age
        self._stale_after = STALE_AFTER
        self._logged = threading.Lock()
        self._stale_logged = False
        self._pushed: int | None = None  # the revision a notification announced, for the next follow_once
        self._warm_failed: str | None = None  # the staged version whose compile failed (tried once)
        self._announced: Callable[[], int | None] | None = None  # see watch_announcements
        self.identity: str | None = None  # the store this manager serves from, once seen

    @property
    def stale_reason(self) -> str | None:
        """Why what serves may be old (the store failed, or a pushing store stopped answering), or None."""
        if self._reason is not None:
            return self._reason
        age = self._age() if self._age is not None else None
        if age is None or age <= self._stale_after:
            return None
        reason = (
            f"the store has not answered for {age:.1f} s (more than {self._stale_after:g} s: hung or unreachable); "
            f"serving revision {self._publisher.state.revision}"
        )
        self._note_stale(reason)
        return reason

    @stale_reason.setter
    def stale_reason(self, reason: str | None) -> None:
        self._reason = reason

    def watch_round_trips(self, age: Callable[[], float | None] | None, stale_after: float = STALE_AFTER) -> None:
        """Report stale when ``age()`` (seconds since the store last answered) exceeds ``stale_after``."""
        self._age, self._stale_after = age, stale_after

    def mark_stale(self, reason: str) -> None:
        """Serve on, stale, because of ``reason`` (logged once until recovered)."""
        self._reason = reason
        self._note_stale(reason)

    def _note_stale(self, reason: str) -> None:
        with self._logged:
            first, self._stale_logged = not self._stale_logged, True
        if first:
            _log.warning("follower.stale", error=reason, revision=self._publisher.state.revision)

    def load(self) -> None:
        """Publish the stored state and note which store it came from (continuity is checked against it)."""
        with self._lock:
            self._publisher.publish_latest()
            self.identity = self._publisher.store.identity()

    def notified(self, revision: int) -> None:
        """A notification announced ``revision``: the next :meth:`follow_once` loads without asking first.

        Only a store that checks continuity on every ``load`` pushes (PostgreSQL), so skipping the
        ``mark()`` round trip skips no check: the load itself refuses another store or an older copy.
        """
        self._pushed = revision

    def watch_announcements(self, announced: Callable[[], int | None] | None) -> None:
        """``announced()``: a newer revision a notification has already announced, or None (no wait).

        Set by :class:`PushLoop`, so a burst of commits (``deploy``: a prepare, then its activation
        a few milliseconds later) is loaded in one pickup: after publishing one revision, a newer
        one already announced is loaded at once, before the heartbeat and the prepare's compile.
        """
        self._announced = announced

    def follow_once(self) -> bool:
        """Publish the stored state if its revision moved; True when something changed.

        When what serves changed, runs the swap hooks (outside the lock; see the module docstring).
        A newer revision announced meanwhile is followed at once (at most :data:`MAX_BURST` in one
        call, see :meth:`watch_announcements`). Then compiles the newest staged version if it is not
        compiled yet (see :meth:`warm`).
        """
        changed = False
        for _ in range(MAX_BURST):
            if not self._follow_one():
                break
            changed = True
            later = self._announced() if self._announced is not None else None
            if later is None or later <= self._publisher.state.revision:
                break
            self._pushed = later
        if changed:
            self.warm()
        return changed

    def _follow_one(self) -> bool:
        store = self._publisher.store
        pushed, self._pushed = self._pushed, None
        try:
            if pushed is not None and self.identity is not None:
                revision = pushed  # announced by a notification: load it, no mark() first
            else:
                mark = store.mark()
                if self.identity is None:
                    self.identity = mark.identity
                reason = check_continuity(StoreMark(self.identity, self._publisher.state.revision), mark)
                if reason is not None:  # never adopt another store, or an older copy: stale on the last good one
                    raise StoreError(reason)
                revision = mark.revision
            if revision <= self._publisher.state.revision:
                self._recovered(self._publisher.state.revision)
                return False
            with self._lock:
                if revision <= self._publisher.state.revision:  # published meanwhile (no second round trip)
                    return False
                old_state, before = self._publisher.state, self._publisher.serving()
                self._publisher.publish_latest()
                new_state, after = self._publisher.state, self._publisher.serving()
        except (RuleEngineError, OSError, ValueError) as exc:
            self.mark_stale(f"{type(exc).__name__}: {exc}")
            return False
        self._recovered(new_state.revision)
        _log.debug("follower.updated", revision=new_state.revision, active_version_id=new_state.active)
        if self._hooks is not None and before != after:
            run_follow_hooks(self._hooks, self._publisher.store, old_state, new_state, before, after)
        return True

    def warm(self) -> bool:
        """Compile the newest staged version now, so its activation here publishes without a compile.

        A follower learns of a version when it is prepared and of its activation later; compiling
        at the first moment takes the compile (and the bundle's read and checks) off the path from
        the activation's commit to this process serving it. The compile runs outside the lock (the
        data plane never waits on it; control operations here do not either) and the table is kept
        only if the version is still the one to keep. A failure is logged once per version and left
        to the activation, which reports it as it always did. True when a table was compiled.
        """
        publisher = self._publisher
        state = publisher.state
        version_id = publisher.staged_to_compile(state)
        if version_id is None or version_id == self._warm_failed:
            return False
        try:
            table = publisher.compile_version(state, version_id)
        except (RuleEngineError, OSError, ValueError) as exc:
            self._warm_failed = version_id
            _log.warning("follower.prepare_failed", version_id=version_id, error=f"{type(exc).__name__}: {exc}")
            return False
        with self._lock:
            return publisher.keep_table(version_id, table, state)

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
        self._reason = None
        if self._age is not None and (self._age() or 0.0) > self._stale_after:
            return  # the store answered this call, but the pushing session is still silent
        with self._logged:
            logged, self._stale_logged = self._stale_logged, False
        if logged:
            _log.info("follower.recovered", revision=revision)


class PushLoop(BackgroundLoop):
    """The follower's thread on a store that pushes changes: it waits on the listener instead of sleeping.

    Each return of ``wait_for_change`` (a notification, the :data:`PUSH_POLL` poll, a reconnect) runs
    ``step`` (follow once, flush health). A listener failure marks the follower stale and backs off
    (capped, jittered). Stopping aborts the listener's wait, so it is prompt; the thread closes the
    listener when it ends. ``pushed`` / ``polled`` / ``reconnected`` count how new revisions came.
    """

    def __init__(
        self,
        follower: Follower,
        listener: Listener,
        step: Callable[[], None],
        *,
        poll: float = PUSH_POLL,
        stale_after: float = STALE_AFTER,
    ) -> None:
        super().__init__("rule-engine-follower", poll, step)
        self.listener = listener
        self.pushed = self.polled = self.reconnected = 0
        self._follower = follower
        self._stale_after = stale_after
        self._random = random.Random()

    def start(self) -> None:
        """Start the thread; from now on staleness also comes from the listener's round-trip age."""
        self._follower.watch_round_trips(self.listener.last_round_trip_age, self._stale_after)
        self._follower.watch_announcements(self._announced)
        super().start()

    def _announced(self) -> int | None:
        """A revision a notification that already arrived announces (no wait, no round trip), or None.

        Only on this loop's thread (the listener is not thread-safe): a ``refresh()`` called from
        another thread meanwhile gets None.
        """
        if threading.current_thread() is not self._thread or not self.listener.connected:
            return None  # another thread's refresh; or a reconnect, whose re-read is the next wait's to report
        try:
            revision = self.listener.wait_for_change(0.0, poll=False)
        except (RuleEngineError, OSError):
            return None  # the next wait reports it (and reconnects)
        if revision is None or self.listener.last_via != "notify":
            return None
        self.pushed += 1
        return revision

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self._stop.is_set():
                try:
                    revision = self.listener.wait_for_change(self.interval)
                except (RuleEngineError, OSError) as exc:
                    if self._stop.is_set():
                        break
                    self._follower.mark_stale(f"{type(exc).__name__}: {exc}")
                    backoff = min(BACKOFF_CAP, max(BACKOFF_START, backoff * 2))
                    self._stop.wait(backoff * (0.5 + self._random.random() / 2))
                    continue
                backoff = 0.0
                if revision is not None:
                    via = self.listener.last_via
                    self.pushed += via == "notify"
                    self.polled += via == "poll"
                    self.reconnected += via == "connect"
                    if via == "notify":
                        self._follower.notified(revision)
                with self.listener.riding():  # the step's store calls go over the listener's session
                    self._step_once()
        finally:
            self._follower.watch_round_trips(None)
            self._follower.watch_announcements(None)
            self.listener.close()

    def _step_once(self) -> None:
        try:
            self._step()
        except Exception as exc:
            _log.error("background.step_failed", thread=self._thread.name, error=f"{type(exc).__name__}: {exc}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (interrupting the listener's wait) and wait for it, at most ``timeout`` seconds."""
        self._stop.set()
        self.listener.abort()
        super().stop(timeout)


def follow_loop(
    follower: Follower, store: StateStore, step: Callable[[], None], poll_interval: float
) -> BackgroundLoop:
    """The follower's background loop: pushed by ``store.listen()`` when the store has it, else polling."""
    listen = getattr(store, "listen", None)
    if callable(listen):
        return PushLoop(follower, listen(), step)
    return BackgroundLoop("rule-engine-follower", poll_interval, step)


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
