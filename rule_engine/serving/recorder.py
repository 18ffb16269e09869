"""Hot-path counting: lock-free per-thread counters of one version's evaluations.

:class:`VersionRecorder` counts evaluations, errors, timeouts, a latency histogram and which decisions
were given, per thread and without a lock: each thread owns a :class:`_Shard` and only it writes
there. The control plane *drains* recorders (sums the shards, subtracts what it drained before) and
adds the delta to the store's time buckets, off the hot path.
"""

from __future__ import annotations

import threading
from typing import Any

from rule_engine.serving.counts import HISTOGRAM_BUCKETS, HealthCounts

__all__ = ["VersionRecorder"]


class _Shard:
    """One thread's counters for one version; only that thread writes them."""

    __slots__ = ("errors", "fallback_errors", "fallbacks", "histogram", "latency_ns", "outcomes", "timeouts")

    def __init__(self) -> None:
        self.errors = 0
        self.fallbacks = 0
        self.fallback_errors = 0
        self.timeouts = 0
        self.latency_ns = 0
        self.histogram = [0] * HISTOGRAM_BUCKETS
        self.outcomes: dict[Any, int] = {}


class VersionRecorder:
    """Lock-free counters of one version's evaluations, sharded per thread.

    The hot path calls :meth:`record` (or :meth:`record_error`). The control plane calls
    :meth:`drain` to take what was counted since the previous drain.
    """

    __slots__ = ("_drain_lock", "_drained", "_local", "_shards", "deadline_ns", "version_id")

    def __init__(self, version_id: str, deadline_us: float) -> None:
        self.version_id = version_id
        self.deadline_ns = int(deadline_us * 1000)
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._drain_lock = threading.Lock()
        self._drained = HealthCounts()

    def shard(self) -> _Shard:
        """This thread's shard (created, and registered for draining, on first use)."""
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = _Shard()
            with self._drain_lock:
                self._shards.append(shard)
            self._local.shard = shard
        return shard

    def record(self, outcome: Any, elapsed_ns: int) -> None:
        """Count one evaluation that gave ``outcome`` (a decision) in ``elapsed_ns``."""
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = self.shard()
        shard.latency_ns += elapsed_ns
        # One histogram entry per evaluation: their sum is the evaluation count (see totals()).
        # bit_length() <= 63 for any int64 nanosecond count, so no clamp is needed.
        shard.histogram[elapsed_ns.bit_length()] += 1
        if elapsed_ns > self.deadline_ns:
            shard.timeouts += 1
        outcomes = shard.outcomes
        try:
            outcomes[outcome] += 1
        except KeyError:
            outcomes[outcome] = 1

    def record_error(self, elapsed_ns: int) -> None:
        """Count one evaluation that failed."""
        shard = self.shard()
        shard.errors += 1
        shard.latency_ns += elapsed_ns
        shard.histogram[min(elapsed_ns.bit_length(), 63)] += 1
        if elapsed_ns > self.deadline_ns:
            shard.timeouts += 1

    def record_fallback(self, *, failed: bool) -> None:
        """Count one event this version answered for a candidate that failed on it (``failed``: this one too).

        A fallback is not one of this version's evaluations: it is counted apart (``fallbacks`` and
        ``fallback_errors``), so the figures of each version count only the events routed to it.
        """
        shard = self.shard()
        shard.fallbacks += 1
        if failed:
            shard.fallback_errors += 1

    def totals(self) -> HealthCounts:
        """Everything counted so far, over all threads."""
        with self._drain_lock:
            shards = list(self._shards)
        return _sum_shards(shards)

    def drain(self) -> HealthCounts:
        """What was counted since the previous drain (safe with concurrent recording and draining)."""
        with self._drain_lock:  # two concurrent drains must not both subtract the same previous total
            totals = _sum_shards(list(self._shards))
            previous, self._drained = self._drained, totals
        return _subtract(totals, previous)


def _sum_shards(shards: list[_Shard]) -> HealthCounts:
    """The sum of some shards' counters (each read once; a shard only ever grows)."""
    evaluations = errors = timeouts = latency = fallbacks = fallback_errors = 0
    histogram = [0] * HISTOGRAM_BUCKETS
    decisions: dict[str, int] = {}
    rules: dict[str, int] = {}
    for shard in shards:
        counts = list(shard.histogram)  # one entry per evaluation, errors included
        evaluations += sum(counts)
        errors += shard.errors
        timeouts += shard.timeouts
        latency += shard.latency_ns
        fallbacks += shard.fallbacks
        fallback_errors += shard.fallback_errors
        for i, count in enumerate(counts):
            histogram[i] += count
        for outcome, count in list(shard.outcomes.items()):
            name = getattr(outcome, "decision", str(outcome))
            decisions[name] = decisions.get(name, 0) + count
            rule_id = getattr(outcome, "rule_id", None) or ""
            rules[rule_id] = rules.get(rule_id, 0) + count
    return HealthCounts(
        evaluations, errors, timeouts, latency / 1000, tuple(histogram), decisions, rules, fallbacks, fallback_errors
    )


def _subtract(a: HealthCounts, b: HealthCounts) -> HealthCounts:
    histogram = tuple(x - (b.histogram[i] if i < len(b.histogram) else 0) for i, x in enumerate(a.histogram))
    decisions = {k: v - b.decisions.get(k, 0) for k, v in a.decisions.items() if v - b.decisions.get(k, 0)}
    rules = {k: v - b.rules.get(k, 0) for k, v in a.rules.items() if v - b.rules.get(k, 0)}
    return HealthCounts(
        a.evaluations - b.evaluations,
        a.errors - b.errors,
        a.timeouts - b.timeouts,
        a.latency_sum_us - b.latency_sum_us,
        histogram if any(histogram) else (),
        decisions,
        rules,
        a.fallbacks - b.fallbacks,
        a.fallback_errors - b.fallback_errors,
    )
