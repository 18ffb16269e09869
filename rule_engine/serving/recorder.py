"""Hot-path counting: exact lock-free outcome counts and sampled timing of one version's evaluations.

:class:`VersionRecorder` counts every evaluation **exactly** and times **one in**
:data:`SAMPLE_EVERY` (docs/health.md, "Recording"):

* outcomes: one ``itertools.count`` per decision the version gave, in a dict shared by all
  threads. ``next()`` on it is one C call that holds the GIL, so concurrent threads never lose a
  count and no lock is taken; a new decision's counter is added with ``dict.setdefault`` (atomic).
  The number of counters is bounded by the decisions a table can give (its rules + 2);
* timing: the engine times a call when :attr:`VersionRecorder.sample` is set. A counter's value
  is a multiple of :data:`SAMPLE_EVERY` once in that many calls, which sets it; every drain sets
  it too, so each drained period has at least one timed call when it has calls;
* what the sampled path and the rare paths (errors, fallbacks) count goes to a per-thread
  :class:`_Shard` that only its thread writes.

The control plane *drains* recorders, off the hot path: it takes what was counted since the
previous drain and scales the timed figures to every evaluation of the period (latency sum,
histogram and timeouts are estimates from the timed calls; evaluations, errors, decisions and
fallbacks are exact).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from rule_engine.serving.counts import HISTOGRAM_BUCKETS, HealthCounts

__all__ = ["SAMPLE_EVERY", "SAMPLE_MASK", "VersionRecorder"]

#: One evaluation in this many is timed (a power of two: the engine tests ``n & SAMPLE_MASK``).
SAMPLE_EVERY = 16
SAMPLE_MASK = SAMPLE_EVERY - 1


class _Shard:
    """One thread's counters of the sampled and rare paths for one version; only that thread writes."""

    __slots__ = ("errors", "fallback_errors", "fallbacks", "histogram", "latency_ns", "timed", "timeouts")

    def __init__(self) -> None:
        self.errors = 0
        self.fallbacks = 0
        self.fallback_errors = 0
        self.timed = 0  # timed evaluations (the histogram's sum)
        self.timeouts = 0  # timed evaluations over the deadline
        self.latency_ns = 0  # of the timed evaluations
        self.histogram = [0] * HISTOGRAM_BUCKETS


@dataclass(slots=True)
class _Raw:
    """Unscaled totals: exact counts, and the figures of the timed evaluations."""

    evaluations: int = 0
    errors: int = 0
    fallbacks: int = 0
    fallback_errors: int = 0
    timed: int = 0
    timeouts: int = 0
    latency_ns: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BUCKETS)
    outcomes: dict[Any, int] = field(default_factory=dict)


class VersionRecorder:
    """Exact counts and sampled timing of one version's evaluations, without a lock on the hot path.

    The engine's per-call protocol (``RuleEngine.evaluate`` inlines it): when :attr:`sample` is
    set, clear it, time the evaluation and call :meth:`record` (or :meth:`record_error`); else
    count the decision with ``n = next(recorder.outcomes[decision])`` (:meth:`count_new` for a
    decision not seen yet) and set :attr:`sample` when ``n & SAMPLE_MASK == 0``; a failure is
    :meth:`record_error` with no time. The control plane calls :meth:`drain`.
    """

    __slots__ = (
        "_drain_lock",
        "_drained",
        "_local",
        "_shards",
        "_timing_base",
        "deadline_ns",
        "outcomes",
        "sample",
        "version_id",
    )

    def __init__(self, version_id: str, deadline_us: float) -> None:
        self.version_id = version_id
        self.deadline_ns = int(deadline_us * 1000)
        self.outcomes: dict[Any, count[int]] = {}  # decision -> calls that gave it (exact)
        self.sample = True  # time the next call (the first one is)
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._drain_lock = threading.Lock()
        self._drained = _Raw()  # the totals at the previous drain
        self._timing_base = _Raw()  # the totals at the last drain that had timed calls

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

    def count_new(self, outcome: Any) -> int:
        """Count ``outcome`` (a decision) whose counter may not exist yet; the count before this one."""
        return next(self.outcomes.setdefault(outcome, count()))

    def count(self, outcome: Any) -> None:
        """Count one untimed evaluation that gave ``outcome``, as the engine does inline."""
        try:
            n = next(self.outcomes[outcome])
        except KeyError:
            n = self.count_new(outcome)
        if not n & SAMPLE_MASK:
            self.sample = True

    def record(self, outcome: Any, elapsed_ns: int) -> None:
        """Count one *timed* evaluation that gave ``outcome`` in ``elapsed_ns``."""
        try:
            next(self.outcomes[outcome])
        except KeyError:
            self.count_new(outcome)
        self._time(self.shard(), elapsed_ns)

    def record_error(self, elapsed_ns: int | None = None) -> None:
        """Count one evaluation that failed (``elapsed_ns``: its time, when it was a timed call)."""
        shard = self.shard()
        shard.errors += 1
        if elapsed_ns is not None:
            self._time(shard, elapsed_ns)

    def _time(self, shard: _Shard, elapsed_ns: int) -> None:
        shard.timed += 1
        shard.latency_ns += elapsed_ns
        shard.histogram[min(elapsed_ns.bit_length(), HISTOGRAM_BUCKETS - 1)] += 1
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
        """Everything counted so far, over all threads (timed figures scaled to every evaluation)."""
        with self._drain_lock:
            raw = self._raw()
        return _counts(raw, _Raw(), _estimate(raw, _Raw(), raw.evaluations))

    def drain(self) -> HealthCounts:
        """What was counted since the previous drain (safe with concurrent recording and draining).

        Exact figures are the difference with the previous drain. The timed figures of the calls
        timed since the last drain that had any are scaled to the evaluations counted since then;
        a period with calls but no timed one (only when its one sampled call is still running)
        reports no latency, and its calls are estimated with the next period's samples.
        """
        with self._drain_lock:  # two concurrent drains must not both subtract the same previous total
            raw = self._raw()
            base = self._timing_base
            estimate = _estimate(raw, base, raw.evaluations - base.evaluations)
            if raw.timed > base.timed:
                self._timing_base = raw
            delta = _counts(raw, self._drained, estimate)
            self._drained = raw
            self.sample = True  # the next period starts with a timed call
        return delta

    def _raw(self) -> _Raw:
        """The unscaled totals (called under the drain lock; each counter is read once)."""
        raw = _Raw()
        for shard in list(self._shards):
            raw.errors += shard.errors
            raw.fallbacks += shard.fallbacks
            raw.fallback_errors += shard.fallback_errors
            raw.timed += shard.timed
            raw.timeouts += shard.timeouts
            raw.latency_ns += shard.latency_ns
            for i, n in enumerate(list(shard.histogram)):
                raw.histogram[i] += n
        for outcome, counter in self.outcomes.copy().items():
            raw.outcomes[outcome] = _value(counter)
        raw.evaluations = raw.errors + sum(raw.outcomes.values())
        return raw


_Estimate = tuple[int, float, tuple[int, ...]]  # timeouts, latency sum (us), histogram


def _estimate(raw: _Raw, base: _Raw, counted: int) -> _Estimate:
    """The timed figures since ``base``, scaled from the timed calls to ``counted`` evaluations.

    Latency sum and timeouts are multiplied by ``counted / timed``; the histogram is apportioned
    (largest remainder) so that its buckets sum to ``counted`` exactly, as percentiles expect.
    """
    timed = raw.timed - base.timed
    if timed <= 0 or counted <= 0:
        return 0, 0.0, ()
    factor = counted / timed
    timeouts = min(counted, round((raw.timeouts - base.timeouts) * factor))
    latency_us = (raw.latency_ns - base.latency_ns) * factor / 1000
    shares = [(now - then) * counted for now, then in zip(raw.histogram, base.histogram, strict=True)]
    histogram = [share // timed for share in shares]
    short = counted - sum(histogram)
    for i in sorted(range(len(shares)), key=lambda i: -(shares[i] % timed))[:short]:
        histogram[i] += 1
    return timeouts, latency_us, tuple(histogram)


def _counts(raw: _Raw, previous: _Raw, estimate: _Estimate) -> HealthCounts:
    """The exact counts of ``raw - previous`` with the timed figures of ``estimate``."""
    decisions: dict[str, int] = {}
    rules: dict[str, int] = {}
    for outcome, total in raw.outcomes.items():
        n = total - previous.outcomes.get(outcome, 0)
        if n:
            name = getattr(outcome, "decision", str(outcome))
            decisions[name] = decisions.get(name, 0) + n
            rule_id = getattr(outcome, "rule_id", None) or ""
            rules[rule_id] = rules.get(rule_id, 0) + n
    evaluations = raw.evaluations - previous.evaluations
    timeouts, latency_us, histogram = estimate
    return HealthCounts(
        evaluations,
        raw.errors - previous.errors,
        min(timeouts, evaluations),
        latency_us,
        histogram,
        decisions,
        rules,
        raw.fallbacks - previous.fallbacks,
        raw.fallback_errors - previous.fallback_errors,
    )


def _value(counter: count[int]) -> int:
    """The next value of an ``itertools.count`` (the calls counted so far): ``repr`` is ``count(n)``."""
    return int(repr(counter)[6:-1])
