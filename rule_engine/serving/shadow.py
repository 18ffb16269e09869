"""Shadow evaluation: a candidate decides a sample of live events off the request thread; answers discarded.

:class:`ShadowEvaluator` is attached to a serving cell (:func:`start_shadow`). For a sample of the
events the *stable* version decided (``sample_rate``, drawn per call with no lock), the request
thread only enqueues ``(event, stable decision)`` into a bounded queue (full: dropped and counted);
one worker thread decides each event on the candidate table and counts

- ``evaluations``, ``errors`` (the candidate raised) and ``baseline_errors`` (stable had failed on
  it: not compared);
- ``disagreements``: events the candidate evaluated whose decision differs from stable's, grouped by
  ``(agent_id, flow_id, stable decision, candidate decision)`` (at most :data:`MAX_GROUPS` groups;
  the rest is folded into ``(other)``);
- ``same_decision_other_rule``: same decision, another rule decided it.

The candidate's answer is never served. :meth:`ShadowEvaluator.report` gives an immutable
:class:`ShadowReport`; ``rule_engine.health.shadow`` judges it (hold, abort, proceed to a canary).
With a decision log attached, the shadow's sampled decisions are logged with role ``shadow``.
"""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from random import random
from time import perf_counter_ns, time
from typing import Any

from rule_engine.evaluation.table import RuleTable
from rule_engine.serving.decisionlog import DecisionLog, LoggedDecision, Taps, check_sampling, counted
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot, SnapshotSource

__all__ = ["MAX_GROUPS", "MAX_LABEL", "ShadowEvaluator", "ShadowReport", "shadow_of", "start_shadow", "stop_shadow"]

MAX_GROUPS = 1_000
MAX_LABEL = 128  # an agent, flow or decision longer than this is cut (events are hostile)
OTHER = "(other)"
_POLL_SECS = 0.1

Group = tuple[str, str, str, str]  # agent, flow, stable decision, candidate decision


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """What a shadow evaluator has counted so far (an immutable copy)."""

    version_id: str | None
    sample_rate: float
    sampled: int = 0
    dropped: int = 0
    evaluations: int = 0
    errors: int = 0
    baseline_errors: int = 0
    disagreements: int = 0
    same_decision_other_rule: int = 0
    groups: Mapping[Group, int] = field(default_factory=dict)

    @property
    def compared(self) -> int:
        """Events both versions evaluated without error."""
        return self.evaluations - self.errors - self.baseline_errors

    @property
    def error_rate(self) -> float:
        """Candidate errors per shadow evaluation (0 with none)."""
        return self.errors / self.evaluations if self.evaluations else 0.0

    @property
    def disagreement_rate(self) -> float:
        """Disagreements per compared event (0 with none)."""
        return self.disagreements / self.compared if self.compared > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``status --json``'s ``shadow``): counts, rates and the groups, largest first."""
        ranked = sorted(self.groups.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "version_id": self.version_id,
            "sample_rate": self.sample_rate,
            "sampled": self.sampled,
            "dropped": self.dropped,
            "evaluations": self.evaluations,
            "errors": self.errors,
            "baseline_errors": self.baseline_errors,
            "compared": self.compared,
            "disagreements": self.disagreements,
            "same_decision_other_rule": self.same_decision_other_rule,
            "error_rate": self.error_rate,
            "disagreement_rate": self.disagreement_rate,
            "groups": [{"agent": a, "flow": f, "from": b, "to": c, "count": n} for (a, f, b, c), n in ranked],
        }

    def minus(self, earlier: ShadowReport) -> ShadowReport:
        """What was counted since ``earlier`` (a report of the same evaluator taken before this one)."""
        groups = {g: n - earlier.groups.get(g, 0) for g, n in self.groups.items()}
        return ShadowReport(
            self.version_id,
            self.sample_rate,
            self.sampled - earlier.sampled,
            self.dropped - earlier.dropped,
            self.evaluations - earlier.evaluations,
            self.errors - earlier.errors,
            self.baseline_errors - earlier.baseline_errors,
            self.disagreements - earlier.disagreements,
            self.same_decision_other_rule - earlier.same_decision_other_rule,
            {g: n for g, n in groups.items() if n > 0},
        )

    def __bool__(self) -> bool:
        return self.sampled > 0 or self.dropped > 0 or self.evaluations > 0


def _label(value: Any) -> str:
    if isinstance(value, str):
        return value if len(value) <= MAX_LABEL else value[: MAX_LABEL - 3] + "..."
    return "(none)" if value is None else OTHER


class ShadowEvaluator:
    """Decides a sample of live events on ``candidate`` on one worker thread; counts the disagreement.

    Nothing starts in the constructor: :meth:`start` starts the worker, :meth:`stop` stops it
    (what is still queued is dropped: a shadow is a sample). :meth:`run_pending` processes the
    queue on the calling thread (tests, or a caller without threads).
    """

    def __init__(
        self,
        candidate: RuleTable,
        *,
        sample_rate: float = 0.1,
        max_queue: int = 1_000,
        log: DecisionLog | None = None,
    ) -> None:
        check_sampling(sample_rate, max_queue)
        self.candidate = candidate
        self.sample_rate = float(sample_rate)
        self.log = log
        self._queue: queue.Queue[tuple[ServingSnapshot, Any, Any, Any]] = queue.Queue(max_queue)
        self._sampled = itertools.count()
        self._dropped = itertools.count()
        self._lock = threading.Lock()  # the worker's counters, against report() (never the request thread)
        self._evaluations = self._errors = self._baseline_errors = 0
        self._disagreements = self._other_rule = 0
        self._groups: dict[Group, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner: weakref.ref[Any] | None = None
        self._drained = ShadowReport(candidate.version_id, self.sample_rate)

    def put(self, snapshot: ServingSnapshot, key: Any, event: Any, decision: Any) -> None:
        """Enqueue an event stable decided (hot path): never blocks; a full queue drops and counts."""
        next(self._sampled)
        try:
            self._queue.put((snapshot, key, event, decision), False)
        except queue.Full:
            next(self._dropped)

    def start(self, owner: object | None = None) -> None:
        """Start the worker thread (once); with ``owner``, it also ends once ``owner`` is garbage collected."""
        if self._thread is not None:
            raise RuntimeError("the shadow evaluator is already started")
        self._owner = weakref.ref(owner) if owner is not None else None
        self._thread = threading.Thread(target=self._run, name="rule-engine-shadow", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def run_pending(self, limit: int = 1_000_000) -> int:
        """Decide up to ``limit`` queued events on the calling thread; how many were decided."""
        done = 0
        while done < limit and self._one(0):
            done += 1
        return done

    def report(self) -> ShadowReport:
        """The counts so far."""
        with self._lock:
            return ShadowReport(
                self.candidate.version_id,
                self.sample_rate,
                counted(self._sampled),
                counted(self._dropped),
                self._evaluations,
                self._errors,
                self._baseline_errors,
                self._disagreements,
                self._other_rule,
                dict(self._groups),
            )

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until every event queued so far is decided (by the worker or :meth:`run_pending`); False on timeout."""
        pending = self._queue
        with pending.all_tasks_done:  # waits in slices: a frozen clock (freezegun) cannot stretch the bound
            for _ in range(max(int(timeout / _POLL_SECS), 1)):
                if not pending.unfinished_tasks:
                    return True
                pending.all_tasks_done.wait(_POLL_SECS)
            return not pending.unfinished_tasks

    def drain(self) -> ShadowReport:
        """What was counted since the last drain (for the health ledger, which flushes it to the store)."""
        report = self.report()
        delta, self._drained = report.minus(self._drained), report
        return delta

    def _run(self) -> None:
        owner = self._owner
        while not self._stop.is_set() and (owner is None or owner() is not None):
            self._one(_POLL_SECS)

    def _one(self, timeout: float) -> bool:
        try:
            snapshot, key, event, stable = self._queue.get(True, timeout)
        except queue.Empty:
            return False
        try:
            self._decide(snapshot, key, event, stable)
        finally:
            self._queue.task_done()
        return True

    def _decide(self, snapshot: ServingSnapshot, key: Any, event: Any, stable: Any) -> None:
        message = ""
        start = perf_counter_ns()
        try:
            decision = self.candidate.evaluate(event)
        except Exception as exc:
            decision = None
            message = f"{type(exc).__name__}: {exc}"
        elapsed = perf_counter_ns() - start
        with self._lock:
            self._evaluations += 1
            if decision is None:
                self._errors += 1
            elif getattr(stable, "error", None) is not None:
                self._baseline_errors += 1
            elif decision.decision != stable.decision:
                self._disagreements += 1
                self._count(event, _label(stable.decision), _label(decision.decision))
            elif decision.rule_id != stable.rule_id:
                self._other_rule += 1
        log = self.log
        if log is not None and (decision is None or random() < log.sample_rate):
            shown = decision if decision is not None else self.candidate.error_decision(message)
            log.put(LoggedDecision(time(), snapshot, self.candidate, "shadow", key, event, shown, elapsed))

    def _count(self, event: Any, before: str, after: str) -> None:
        try:
            agent, flow = _label(event.get("agent_id")), _label(event.get("flow_id"))
        except Exception:
            agent = flow = OTHER
        group = (agent, flow, before, after)
        groups = self._groups
        if group not in groups and len(groups) >= MAX_GROUPS:
            group = (OTHER, OTHER, OTHER, OTHER)
        groups[group] = groups.get(group, 0) + 1


def _cell_of(source: SnapshotSource | ServingCell) -> ServingCell:
    return source if isinstance(source, ServingCell) else source.serving_cell


def start_shadow(
    source: SnapshotSource | ServingCell,
    candidate: RuleTable,
    *,
    sample_rate: float = 0.1,
    max_queue: int = 1_000,
) -> ShadowEvaluator:
    """Run ``candidate`` in the shadow of what ``source`` serves (a manager or its cell); started.

    A decision log already attached to the cell keeps logging, and logs the shadow's sampled
    decisions too (role ``shadow``). :func:`stop_shadow` detaches and stops it.
    """
    cell = _cell_of(source)
    log = cell.taps.log if cell.taps is not None else None
    shadow = ShadowEvaluator(candidate, sample_rate=sample_rate, max_queue=max_queue, log=log)
    shadow.start()
    cell.attach(Taps(log, shadow))
    return shadow


def stop_shadow(source: SnapshotSource | ServingCell, shadow: ShadowEvaluator) -> ShadowReport:
    """Detach ``shadow`` from ``source`` (a decision log stays attached), stop it; its final report."""
    cell = _cell_of(source)
    taps = cell.taps
    if taps is not None and taps.shadow is shadow:
        cell.attach(Taps(taps.log, None))
    shadow.stop()
    return shadow.report()


def shadow_of(source: SnapshotSource | ServingCell) -> ShadowEvaluator | None:
    """The shadow evaluator attached to ``source``, if any."""
    taps = _cell_of(source).taps
    shadow = taps.shadow if taps is not None else None
    return shadow if isinstance(shadow, ShadowEvaluator) else None
