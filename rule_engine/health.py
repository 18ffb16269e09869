"""Health per version: counting evaluations in the hot path, and judging a version on them.

**Counting.** :class:`VersionRecorder` counts evaluations, errors, timeouts, a latency histogram and
which decisions were given, per thread and without a lock: each thread owns a :class:`_Shard` and
only it writes there. The control plane *drains* recorders (sums the shards, subtracts what it
drained before) and adds the delta to the store's time buckets, off the hot path.

**Judging.** :func:`judge` gives a verdict on a version's counts over the recent window
(``HealthThresholds.window_secs``), never on its lifetime, so hours of good traffic cannot hide a new
failure. Below ``min_evaluations`` there is no verdict (``None``): a stage holds and nothing is rolled
back for lack of data. When a baseline (the stable version over the same window) is given, a
candidate is only blamed for a failure it does not share: its error or timeout rate must also be
significantly higher (one-sided two-proportion z-test) and its latency clearly higher.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rule_engine.clock import iso

__all__ = [
    "HealthCounts",
    "HealthMetrics",
    "HealthThresholds",
    "Verdict",
    "VersionRecorder",
    "judge",
    "two_proportion_z_test",
]

HISTOGRAM_BUCKETS = 64  # bucket i holds latencies of i bits in nanoseconds: [2**(i-1), 2**i)


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """When a version counts as unhealthy, and how much data a verdict needs.

    ``max_error_rate``, ``max_latency_us`` (average) and ``max_timeouts`` (count) apply to the recent
    ``window_secs``; ``min_evaluations`` is the least data for any verdict. ``significance`` is the
    p-value below which a candidate's higher error/timeout rate is blamed on it rather than shared
    with the stable version; ``max_latency_ratio`` the same for latency. ``bake_secs``: how long
    after it takes all traffic a new version is still judged (and rolled back if unhealthy).
    """

    max_error_rate: float = 0.01
    max_latency_us: float = 10_000.0
    max_timeouts: int = 100
    min_evaluations: int = 200
    window_secs: float = 300.0
    bucket_secs: float = 5.0
    significance: float = 0.05
    max_latency_ratio: float = 1.5
    bake_secs: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be within [0, 1], got {self.max_error_rate!r}")
        if self.min_evaluations < 0 or self.max_timeouts < 0:
            raise ValueError("min_evaluations and max_timeouts must be >= 0")
        if self.window_secs <= 0 or self.bucket_secs <= 0 or self.bucket_secs > self.window_secs:
            raise ValueError("need 0 < bucket_secs <= window_secs")
        if not 0 < self.significance < 1:
            raise ValueError(f"significance must be within (0, 1), got {self.significance!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class HealthCounts:
    """Additive counters of one version over some period (a bucket, a window, a lifetime)."""

    evaluations: int = 0
    errors: int = 0
    timeouts: int = 0
    latency_sum_us: float = 0.0
    histogram: tuple[int, ...] = ()
    decisions: Mapping[str, int] = field(default_factory=dict)
    rules: Mapping[str, int] = field(default_factory=dict)  # matches per rule id; "" = the default decision

    def __add__(self, other: HealthCounts) -> HealthCounts:
        return HealthCounts(
            self.evaluations + other.evaluations,
            self.errors + other.errors,
            self.timeouts + other.timeouts,
            self.latency_sum_us + other.latency_sum_us,
            _add_lists(self.histogram, other.histogram),
            _add_maps(self.decisions, other.decisions),
            _add_maps(self.rules, other.rules),
        )

    def __bool__(self) -> bool:
        return self.evaluations > 0 or self.errors > 0 or self.timeouts > 0

    @property
    def error_rate(self) -> float:
        """Errors per evaluation (0 with no evaluations)."""
        return self.errors / self.evaluations if self.evaluations else 0.0

    @property
    def avg_latency_us(self) -> float:
        """Mean latency in microseconds (0 with no evaluations)."""
        return self.latency_sum_us / self.evaluations if self.evaluations else 0.0

    def percentile_us(self, q: float) -> float | None:
        """The q-quantile (0..1) of latency in microseconds, from the histogram (None if empty).

        Buckets are powers of two; the value is interpolated inside the bucket, so it is exact to
        within the bucket's width.
        """
        total = sum(self.histogram)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for bits, count in enumerate(self.histogram):
            if count and seen + count >= rank:
                low = 0 if bits == 0 else 1 << (bits - 1)
                high = 1 if bits == 0 else 1 << bits
                fraction = (rank - seen) / count
                return (low + (high - low) * fraction) / 1000
            seen += count
        return (1 << (len(self.histogram) - 1)) / 1000

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (stored in buckets)."""
        return {
            "evaluations": self.evaluations,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "latency_sum_us": self.latency_sum_us,
            "histogram": list(self.histogram),
            "decisions": dict(self.decisions),
            "rules": dict(self.rules),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCounts:
        """Rebuild from :meth:`to_dict`."""
        return cls(
            int(data.get("evaluations", 0)),
            int(data.get("errors", 0)),
            int(data.get("timeouts", 0)),
            float(data.get("latency_sum_us", 0.0)),
            tuple(int(x) for x in data.get("histogram", ())),
            {str(k): int(v) for k, v in dict(data.get("decisions", {})).items()},
            {str(k): int(v) for k, v in dict(data.get("rules", {})).items()},
        )


def _add_lists(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b:
        return a
    longer, shorter = (a, b) if len(a) >= len(b) else (b, a)
    return tuple(x + (shorter[i] if i < len(shorter) else 0) for i, x in enumerate(longer))


def _add_maps(a: Mapping[str, int], b: Mapping[str, int]) -> Mapping[str, int]:
    if not a:
        return b
    if not b:
        return a
    merged = dict(a)
    for key, value in b.items():
        merged[key] = merged.get(key, 0) + value
    return merged


def sum_counts(parts: Iterable[HealthCounts]) -> HealthCounts:
    """The sum of several counts."""
    total = HealthCounts()
    for part in parts:
        total = total + part
    return total


@dataclass(frozen=True, slots=True)
class HealthMetrics:
    """A version's health figures, as reported by ``DeploymentInfo.health_metrics``.

    ``total_*`` fields are lifetime totals; ``window`` holds the figures the verdict is based on.
    """

    total_evaluations: int = 0
    error_count: int = 0
    timeout_count: int = 0
    avg_latency_us: float = 0.0
    error_rate: float = 0.0
    last_check: float | None = None
    p50_latency_us: float | None = None
    p99_latency_us: float | None = None
    window: HealthCounts = field(default_factory=HealthCounts)
    verdict: bool | None = None
    verdict_reason: str = ""
    rule_matches: Mapping[str, int] = field(default_factory=dict)  # lifetime; "" = no rule (default)

    @classmethod
    def of(
        cls,
        lifetime: HealthCounts,
        window: HealthCounts,
        verdict: Verdict,
        last_check: float | None,
    ) -> HealthMetrics:
        """Figures from lifetime counts, window counts and the window's verdict."""
        return cls(
            total_evaluations=lifetime.evaluations,
            error_count=lifetime.errors,
            timeout_count=lifetime.timeouts,
            avg_latency_us=lifetime.avg_latency_us,
            error_rate=lifetime.error_rate,
            last_check=last_check,
            p50_latency_us=lifetime.percentile_us(0.5),
            p99_latency_us=lifetime.percentile_us(0.99),
            window=window,
            verdict=verdict.healthy,
            verdict_reason=verdict.reason,
            rule_matches=dict(lifetime.rules),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (for ``status --json``)."""
        return {
            "total_evaluations": self.total_evaluations,
            "error_count": self.error_count,
            "timeout_count": self.timeout_count,
            "avg_latency_us": round(self.avg_latency_us, 3),
            "error_rate": self.error_rate,
            "p50_latency_us": self.p50_latency_us,
            "p99_latency_us": self.p99_latency_us,
            "last_check": iso(self.last_check),
            "window": {
                "evaluations": self.window.evaluations,
                "errors": self.window.errors,
                "timeouts": self.window.timeouts,
                "error_rate": self.window.error_rate,
                "avg_latency_us": round(self.window.avg_latency_us, 3),
            },
            "healthy": self.verdict,
            "reason": self.verdict_reason,
            "rule_matches": dict(sorted(self.rule_matches.items(), key=lambda item: -item[1])),
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of judging a version: healthy True/False, or None (no verdict yet), and why."""

    healthy: bool | None
    reason: str


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """z and the two-sided p-value for H0: the rates x1/n1 and x2/n2 are equal (pooled)."""
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return 0.0, 1.0
    z = (p1 - p2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def _significantly_worse(x1: int, n1: int, x2: int, n2: int, alpha: float) -> bool:
    """Whether rate 1 is higher than rate 2 at one-sided level ``alpha``."""
    z, p_two_sided = two_proportion_z_test(x1, n1, x2, n2)
    return z > 0 and p_two_sided / 2 < alpha


def judge(counts: HealthCounts, thresholds: HealthThresholds, baseline: HealthCounts | None = None) -> Verdict:
    """Judge a version's window ``counts`` against ``thresholds`` (and a ``baseline``, if any)."""
    n = counts.evaluations
    window = f"{thresholds.window_secs:g}s"
    if n < thresholds.min_evaluations or (n == 0 and thresholds.min_evaluations > 0):
        return Verdict(
            None,
            f"no verdict yet: {n:,} of {thresholds.min_evaluations:,} evaluations needed in the last {window}",
        )
    if n == 0:
        return Verdict(True, "no traffic in the window, and min_evaluations is 0")
    comparable = baseline is not None and baseline.evaluations >= max(thresholds.min_evaluations, 1)
    shared = []
    rate = counts.error_rate
    if rate > thresholds.max_error_rate:
        if (
            comparable
            and baseline is not None
            and not _significantly_worse(
                counts.errors, n, baseline.errors, baseline.evaluations, thresholds.significance
            )
        ):
            shared.append(f"error rate {rate:.1%} (stable {baseline.error_rate:.1%})")
        else:
            versus = f" (stable: {baseline.error_rate:.1%})" if comparable and baseline else ""
            return Verdict(
                False,
                f"error rate {rate:.1%} > {thresholds.max_error_rate:.1%} over {n:,} evaluations{versus}",
            )
    if counts.timeouts > thresholds.max_timeouts:
        if (
            comparable
            and baseline is not None
            and not _significantly_worse(
                counts.timeouts, n, baseline.timeouts, baseline.evaluations, thresholds.significance
            )
        ):
            shared.append(f"{counts.timeouts:,} timeouts (stable {baseline.timeouts:,})")
        else:
            return Verdict(
                False,
                f"timeouts {counts.timeouts:,} > {thresholds.max_timeouts:,} over {n:,} evaluations",
            )
    latency = counts.avg_latency_us
    if latency > thresholds.max_latency_us:
        if comparable and baseline is not None and latency <= baseline.avg_latency_us * thresholds.max_latency_ratio:
            shared.append(f"average latency {latency:,.0f}us (stable {baseline.avg_latency_us:,.0f}us)")
        else:
            return Verdict(
                False,
                f"average latency {latency:,.0f}us > {thresholds.max_latency_us:,.0f}us over {n:,} evaluations",
            )
    if shared:
        return Verdict(True, "healthy relative to stable; shared with the stable version: " + ", ".join(shared))
    return Verdict(True, f"healthy over {n:,} evaluations in the last {window}")


class _Shard:
    """One thread's counters for one version; only that thread writes them."""

    __slots__ = ("errors", "histogram", "latency_ns", "outcomes", "timeouts")

    def __init__(self) -> None:
        self.errors = 0
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
    evaluations = errors = timeouts = latency = 0
    histogram = [0] * HISTOGRAM_BUCKETS
    decisions: dict[str, int] = {}
    rules: dict[str, int] = {}
    for shard in shards:
        counts = list(shard.histogram)  # one entry per evaluation, errors included
        evaluations += sum(counts)
        errors += shard.errors
        timeouts += shard.timeouts
        latency += shard.latency_ns
        for i, count in enumerate(counts):
            histogram[i] += count
        for outcome, count in list(shard.outcomes.items()):
            name = getattr(outcome, "decision", str(outcome))
            decisions[name] = decisions.get(name, 0) + count
            rule_id = getattr(outcome, "rule_id", None) or ""
            rules[rule_id] = rules.get(rule_id, 0) + count
    return HealthCounts(evaluations, errors, timeouts, latency / 1000, tuple(histogram), decisions, rules)


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
    )
