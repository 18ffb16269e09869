"""The hot-path side of the decision log and of shadow evaluation: sample, enqueue, count drops.

:class:`Taps` is what a :class:`~rule_engine.ServingSnapshot` carries in its ``taps`` field (None,
the default, costs ``RuleEngine.evaluate`` one attribute read and one comparison). After each
decision the engine draws ``random() < taps.rate`` (one C call, no lock) and, when it hits (or the decision
is an error), calls :meth:`Taps.offer`, which

- offers the decision to the :class:`DecisionLog` when it is sampled (``random() < sample_rate``,
  decided per call with no lock; a decision with an error is always kept), and
- offers an event the *stable* version decided to the shadow evaluator (``rule_engine.serving.shadow``)
  when it is sampled by the shadow's own rate.

Both only ``put(item, block=False)`` into a bounded :class:`queue.Queue` and count a ``queue.Full`` as
a drop (LaunchDarkly's ``_post_to_inbox`` shape): the request thread never blocks, never does I/O and
never sees an exception from here. Everything else (the record's JSON, masking, the key's hash, the
routing bucket, the strategy and stage, writing and rotating files) is done by the consumer thread,
:class:`rule_engine.observability.decisions.DecisionLogWriter`.

An item holds references, not copies: the event object is serialised by the writer shortly after the
call, so a caller that mutates an event after ``evaluate`` returned may have the mutation logged.
"""

from __future__ import annotations

import itertools
import queue
from random import random
from time import time
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from rule_engine.evaluation.table import Decision, RuleTable
    from rule_engine.serving.snapshot import ServingSnapshot

__all__ = ["DEFAULT_QUEUE_SIZE", "DecisionLog", "LoggedDecision", "ShadowSink", "Taps", "check_sampling", "counted"]

DEFAULT_QUEUE_SIZE = 10_000


def counted(counter: itertools.count[int]) -> int:
    """How many times ``next(counter)`` was called on a counter started at 0.

    ``next()`` on an :func:`itertools.count` is one atomic C call, so hot-path counters need no lock.
    """
    return int(repr(counter)[6:-1])


def check_sampling(sample_rate: object, max_queue: object) -> None:
    """``ValueError`` unless ``sample_rate`` is a number in [0, 1] and ``max_queue`` a positive integer."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float) or not 0 <= sample_rate <= 1:
        raise ValueError(f"sample_rate must be a number in [0, 1], got {sample_rate!r}")
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be a positive integer, got {max_queue!r}")


class LoggedDecision(NamedTuple):
    """One queued decision: references only, turned into a JSON record by the writer thread."""

    time: float
    snapshot: ServingSnapshot
    table: RuleTable
    role: str
    key: Any
    event: Any
    decision: Decision
    latency_ns: int | None  # None: an error on a call that was not timed


class DecisionLog:
    """A sampled, bounded queue of decisions for one deployment; the writer thread consumes it.

    ``sample_rate`` (0..1) is the share of decisions kept (decisions with an error are always kept);
    ``max_queue`` bounds what waits for the writer: past it, decisions are dropped and counted
    (:attr:`dropped`). Construction starts nothing (see ``DecisionLogWriter.start``).
    """

    __slots__ = ("_dropped", "_queue", "_sampled", "deployment", "key_field", "sample_rate")

    def __init__(
        self,
        deployment: str = "default",
        *,
        sample_rate: float = 0.0,
        max_queue: int = DEFAULT_QUEUE_SIZE,
        key_field: str = "user_id",
    ) -> None:
        check_sampling(sample_rate, max_queue)
        self.deployment = deployment
        self.sample_rate = float(sample_rate)
        self.key_field = key_field
        self._queue: queue.Queue[LoggedDecision] = queue.Queue(max_queue)
        self._sampled = itertools.count()
        self._dropped = itertools.count()

    @property
    def sampled(self) -> int:
        """Decisions selected for the log so far (queued or dropped)."""
        return counted(self._sampled)

    @property
    def dropped(self) -> int:
        """Selected decisions dropped because the queue was full."""
        return counted(self._dropped)

    @property
    def pending(self) -> int:
        """Decisions waiting for the writer (approximate, as ``Queue.qsize``)."""
        return self._queue.qsize()

    def put(self, item: LoggedDecision) -> None:
        """Enqueue without blocking; a full queue drops the item and counts it. Never raises."""
        next(self._sampled)
        try:
            self._queue.put(item, False)
        except queue.Full:
            next(self._dropped)

    def take(self, timeout: float | None) -> LoggedDecision | None:
        """The next queued decision, waiting up to ``timeout`` seconds (None: nothing came). For the writer."""
        try:
            return self._queue.get(True, timeout)
        except queue.Empty:
            return None


class ShadowSink(Protocol):
    """The hot-path face of a shadow evaluator (``rule_engine.serving.shadow.ShadowEvaluator``)."""

    sample_rate: float

    def put(self, snapshot: ServingSnapshot, key: Any, event: Any, decision: Decision) -> None:
        """Enqueue an event the stable version decided; never blocks, never raises."""
        ...


class Taps:
    """What a snapshot taps its decisions into: a decision log, a shadow evaluator, or both.

    ``rate`` is the larger of their sample rates: the engine draws ``random() < rate`` itself and
    calls :meth:`offer` only then (and for every error decision), so an unsampled decision costs one
    C call; :meth:`offer` draws again with the conditional rates, which keeps each tap's share exact.
    """

    __slots__ = ("log", "rate", "shadow")

    def __init__(self, log: DecisionLog | None = None, shadow: ShadowSink | None = None) -> None:
        self.log = log
        self.shadow = shadow
        self.rate = max(log.sample_rate if log is not None else 0.0, shadow.sample_rate if shadow is not None else 0.0)

    def __bool__(self) -> bool:
        return self.log is not None or self.shadow is not None

    def offer(
        self,
        snapshot: ServingSnapshot,
        table: RuleTable,
        key: Any,
        event: Any,
        decision: Decision,
        latency_ns: int | None,
    ) -> None:
        """Sample ``decision`` into the log and ``event`` into the shadow. Never blocks, never raises.

        Called by the engine for an error decision always, otherwise after its own ``random() < rate``.
        """
        try:
            error = decision.error is not None
            scale = 1.0 if error else self.rate  # the engine's draw: P(offer) = rate for a decision without error
            log = self.log
            if log is not None and (error or random() * scale < log.sample_rate):
                role = "candidate" if table is snapshot.candidate else "stable"
                log.put(LoggedDecision(time(), snapshot, table, role, key, event, decision, latency_ns))
            shadow = self.shadow
            if shadow is not None and table is snapshot.stable and random() * scale < shadow.sample_rate:
                shadow.put(snapshot, key, event, decision)
        except Exception:  # a tap must never fail a request (MemoryError building the item, say)
            pass
