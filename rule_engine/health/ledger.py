"""HealthLedger: one process's side of health, between the hot path's recorders and the store.

It owns the :class:`VersionRecorder` of each version this process serves, the counts drained from
them but not yet written (kept when a store write fails, and for versions just evicted, so nothing
is written after a commit), and the verdicts computed from the store's recent window, which sums
the counts every process flushed. The manager calls it under its lock.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from rule_engine.control.records import ControlState, Rollout
from rule_engine.control.states import DeploymentState
from rule_engine.health.shadow import counts_of_report, report_of_counts, shadow_key
from rule_engine.health.thresholds import HealthThresholds
from rule_engine.health.verdict import Verdict, judge
from rule_engine.logs import get_logger
from rule_engine.serving.counts import HealthCounts
from rule_engine.serving.recorder import VersionRecorder
from rule_engine.serving.shadow import ShadowEvaluator, ShadowReport
from rule_engine.stores.base import StateStore

__all__ = ["MAX_REPORTED_EVALUATIONS", "MAX_REPORTED_LATENCY_US", "HealthLedger"]

#: The most evaluations (and so errors and timeouts) one ``update_health_metrics`` report may carry.
MAX_REPORTED_EVALUATIONS = 10**12
#: The highest average latency one report may carry: one hour, in microseconds.
MAX_REPORTED_LATENCY_US = 3_600_000_000.0

_log = get_logger()


class HealthLedger:
    """Recorders, pending counts and verdicts of the versions one manager knows."""

    def __init__(self, store: StateStore, thresholds: HealthThresholds, deadline_us: float) -> None:
        self.store = store
        self.thresholds = thresholds
        self.deadline_us = deadline_us
        self._recorders: dict[str, VersionRecorder] = {}
        self._pending: dict[tuple[str, float], HealthCounts] = {}  # drained, not yet in the store
        self._verdicts: dict[str, Verdict] = {}
        self._last_check: dict[str, float] = {}
        self._last_prune = float("-inf")
        self._analysis: dict[str, tuple[object, HealthThresholds]] = {}  # version -> (stored dict, parsed)
        self._shadows: list[ShadowEvaluator] = []  # a stored shadow phase's evaluators (see watch_shadow)

    def recorder(self, version_id: str) -> VersionRecorder:
        """The hot path's counters for a version (created on first use)."""
        recorder = self._recorders.get(version_id)
        if recorder is None:
            recorder = self._recorders[version_id] = VersionRecorder(version_id, self.deadline_us)
        return recorder

    def bucket(self, now: float) -> float:
        """The start of the time bucket ``now`` falls in."""
        size = self.thresholds.bucket_secs
        return math.floor(now / size) * size

    def flush(self, now: float) -> None:
        """Drain every recorder and write all pending counts in one store call.

        If the store fails, the counts stay pending for the next flush (and the error propagates).
        """
        for version_id, recorder in list(self._recorders.items()):
            self._keep(version_id, recorder.drain(), now)
        for shadow in self._shadows:
            self.keep_shadow(shadow, now)
        self._shadows = [s for s in self._shadows if s.running]
        if self._pending:
            self.store.add_health_many([(vid, start, delta) for (vid, start), delta in self._pending.items()])
            self._pending.clear()

    def watch_shadow(self, shadow: ShadowEvaluator) -> None:
        """Flush ``shadow``'s counts with every :meth:`flush` (into its shadow bucket) until it stops, then once more."""
        if shadow not in self._shadows:
            self._shadows.append(shadow)

    def keep_shadow(self, shadow: ShadowEvaluator, now: float) -> None:
        """Drain a shadow evaluator's new counts into the pending counts (no store I/O)."""
        delta = shadow.drain()
        if delta and shadow.candidate.version_id is not None:
            key = (shadow_key(shadow.candidate.version_id), self.bucket(now))
            self._pending[key] = self._pending.get(key, HealthCounts()) + counts_of_report(delta)

    def shadow_report(self, state: ControlState, rollout: Rollout, sample_rate: float, now: float) -> ShadowReport:
        """The fleet-wide shadow counts of ``rollout``'s candidate over its window, since the phase started."""
        thresholds = self.thresholds_for(state, rollout.candidate)
        size = self.thresholds.bucket_secs
        since = max(self.bucket(now - max(thresholds.window_secs, size) + size), self.bucket(rollout.started_at))
        key = shadow_key(rollout.candidate)
        counts = self.store.health([key], since=since, until=now)[key]
        return report_of_counts(rollout.candidate, sample_rate, counts)

    def keep_evicted(self, evicted: Sequence[str], now: float) -> None:
        """Drain versions leaving history into the pending counts (no store I/O: called after a commit)."""
        for version_id in evicted:
            recorder = self._recorders.get(version_id)
            if recorder is not None:
                self._keep(version_id, recorder.drain(), now)

    def _keep(self, version_id: str, delta: HealthCounts, now: float) -> None:
        if delta:
            key = (version_id, self.bucket(now))
            self._pending[key] = self._pending.get(key, HealthCounts()) + delta

    def add(self, version_id: str, delta: HealthCounts, now: float) -> None:
        """Write figures reported from outside (``update_health_metrics``) at once."""
        self.store.add_health(version_id, self.bucket(now), delta)

    def add_reported(
        self, version_id: str, now: float, evaluations: int, errors: int, timeouts: int, avg_latency_us: float
    ) -> None:
        """Validate figures an evaluator reports as deltas (raising ``ValueError``), then :meth:`add` them.

        Every figure is bounded: counts are integers (not bools) within ``[0, MAX_REPORTED_EVALUATIONS]``,
        errors and timeouts at most evaluations, the latency a finite number (not a bool) within
        ``[0, MAX_REPORTED_LATENCY_US]``. The error names the field and its limit.
        """
        for name, value in (("evaluations", evaluations), ("errors", errors), ("timeouts", timeouts)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPORTED_EVALUATIONS:
                raise ValueError(
                    f"{name} must be an integer within [0, {MAX_REPORTED_EVALUATIONS:,}], got {_short(value)}"
                )
        if errors > evaluations or timeouts > evaluations:
            raise ValueError("errors and timeouts cannot exceed evaluations")
        latency = avg_latency_us
        if (
            isinstance(latency, bool)
            or not isinstance(latency, int | float)
            or not 0 <= latency <= MAX_REPORTED_LATENCY_US  # refuses NaN and inf too; exact for huge ints
        ):
            raise ValueError(
                f"avg_latency_us must be a finite number within [0, {MAX_REPORTED_LATENCY_US:,.0f}], got {_short(latency)}"
            )
        self.add(version_id, HealthCounts(evaluations, errors, timeouts, float(latency) * evaluations), now)

    def thresholds_for(self, state: ControlState, version_id: str | None) -> HealthThresholds:
        """The analysis settings ``version_id`` is judged by: its own (stored with it), else this manager's.

        ``bucket_secs`` is always this manager's: it is how counts are written, not how they are judged.
        """
        record = state.versions.get(version_id) if version_id is not None else None
        stored = record.analysis if record is not None else None
        if stored is None or version_id is None:
            return self.thresholds
        cached = self._analysis.get(version_id)
        if cached is not None and cached[0] is stored:
            return cached[1]
        try:
            parsed = HealthThresholds.from_dict({**stored, "bucket_secs": self.thresholds.bucket_secs})
        except (TypeError, ValueError) as exc:  # validated when prepared: only a damaged store gets here
            _log.warning("health.analysis_invalid", version_id=version_id, error=f"{type(exc).__name__}: {exc}")
            parsed = self.thresholds
        self._analysis[version_id] = (stored, parsed)
        return parsed

    def window(
        self, version_ids: Sequence[str], now: float, thresholds: HealthThresholds | None = None
    ) -> dict[str, HealthCounts]:
        """Each version's counts over the recent window ``[now - window_secs, now]`` (all processes).

        ``window_secs`` is that of ``thresholds`` (default: this manager's). Buckets that start after
        ``now`` (written by a process whose clock ran ahead) never count.
        """
        size = self.thresholds.bucket_secs
        window_secs = max((thresholds or self.thresholds).window_secs, size)
        since = self.bucket(now - window_secs + size)
        return self.store.health(list(version_ids), since=since, until=now)

    def lifetime(self, version_id: str) -> HealthCounts:
        """A version's lifetime totals (all processes)."""
        return self.store.health([version_id])[version_id]

    def since(self, version_ids: Sequence[str], start: float, now: float) -> dict[str, HealthCounts]:
        """Each version's counts from the bucket holding ``start`` up to ``now`` (never future buckets)."""
        return self.store.health(list(version_ids), since=self.bucket(start), until=now)

    def last_check(self, version_id: str) -> float | None:
        """When the version was last judged by this process."""
        return self._last_check.get(version_id)

    def verdict(self, state: ControlState, version_id: str, now: float, *, auto_rollback: bool) -> Verdict:
        """Judge a version over its window, against its baseline if it has one; log when it turns unhealthy."""
        thresholds = self.thresholds_for(state, version_id)
        baseline_id = self.baseline_of(state, version_id, now)
        ids = [version_id] + ([baseline_id] if baseline_id else [])
        counts = self.window(ids, now, thresholds)
        verdict = judge(counts[version_id], thresholds, counts[baseline_id] if baseline_id else None)
        self._last_check[version_id] = now
        previous = self._verdicts.get(version_id)
        self._verdicts[version_id] = verdict
        if verdict.healthy is False and (previous is None or previous.healthy is not False):
            _log.warning("health.unhealthy", version_id=version_id, reason=verdict.reason, auto_rollback=auto_rollback)
        return verdict

    def baseline_of(self, state: ControlState, version_id: str, now: float) -> str | None:
        """The version to compare ``version_id`` with over the same window, if any.

        A rollout's candidate is compared with its stable version; a baking active version (see
        :meth:`baking`) with the version it replaced, so a failure both share (bad traffic, a broken
        upstream) does not roll back a canary that just completed.
        """
        rollout = state.rollout
        if rollout is not None:
            return rollout.stable if rollout.candidate == version_id else None
        if state.active == version_id and self.baking(state, now):
            return state.rollback_target
        return None

    def baking(self, state: ControlState, now: float) -> bool:
        """Whether the active version is in its bake time, judged and rolled back when unhealthy.

        Only a version a deployment brought in bakes: it took traffic (by a blue-green or scheduled
        activation, or as a canary that completed) at most ``bake_secs`` ago (by its own analysis
        settings), it has a version to return to, it was not put back by ``undo`` (an operator's
        choice of a known version), and **no rollback has happened since it was brought in** (at or
        after its activation time: ``state.last_rollback_at``, stored with the state so it holds after
        the rolled-back version left history; for states stored before it, the ROLLED_BACK versions).
        So a version a rollback or an undo reinstated is never rolled back automatically, and neither is
        a stable version whose canary was just rolled back: one incident, one rollback.
        """
        if state.rollout is not None or state.active is None or state.rollback_target is None:
            return False
        record = state.versions.get(state.active)
        if record is None or record.reinstated or record.activated_at is None:
            return False
        activated_at = record.activated_at
        bake_from = record.bake_from  # the fleet's convergence, when recorded (deployment/fleet.py)
        if bake_from is None:
            return False
        bake_secs = self.thresholds_for(state, state.active).bake_secs
        if now - bake_from > bake_secs or activated_at - now > bake_secs:
            return False
        if state.last_rollback_at is not None and state.last_rollback_at >= activated_at:
            return False
        return not any(
            r.state is DeploymentState.ROLLED_BACK and r.finished_at is not None and r.finished_at >= activated_at
            for r in state.versions.values()
        )

    def no_better_target(self, state: ControlState, version_id: str, now: float) -> str | None:
        """Why rolling back the baking active ``version_id`` would not help; None when it would.

        The target's evidence is its own figures in the window, else over its lifetime (when the
        window holds fewer than ``min_evaluations`` of them). With enough evidence, the target is no
        healthier when ``version_id`` is not unhealthy judged against it (the failure is shared). A
        target without enough figures is presumed healthier: it served before without being judged
        unhealthy.
        """
        target = state.rollback_target
        if target is None or target not in state.versions:
            return "there is no version to return to"
        thresholds = self.thresholds_for(state, version_id)
        need = max(thresholds.min_evaluations, 1)
        counts = self.window([version_id, target], now, thresholds)
        evidence, where = counts[target], f"in the last {thresholds.window_secs:g}s"
        if evidence.evaluations < need:
            evidence, where = self.lifetime(target), "over its lifetime"
        if evidence.evaluations >= need and judge(counts[version_id], thresholds, evidence).healthy is not False:
            return (
                f"its rollback target {target} is no healthier "
                f"({evidence.error_rate:.1%} errors over {evidence.evaluations:,} evaluations {where})"
            )
        return None

    def prune(self, now: float, state: ControlState) -> None:
        """Drop buckets no verdict or running A/B report can need (at most once a window).

        Buckets in the future are kept (they may be another process's current counts, if this
        clock is behind). A clock that jumped back prunes at once: the once-a-window guard only
        holds going forward. The longest window of the versions in play is kept.
        """
        if 0 <= now - self._last_prune < self.thresholds.window_secs:
            return
        rollout = state.rollout
        in_play = [state.active, state.rollback_target] + ([rollout.candidate, rollout.stable] if rollout else [])
        window = max([self.thresholds.window_secs] + [self.thresholds_for(state, v).window_secs for v in in_play if v])
        keep_from = now - 2 * window
        if rollout is not None:
            keep_from = min(keep_from, rollout.started_at)
        self.store.prune_health(self.bucket(keep_from))
        self._last_prune = now

    def forget_all_but(self, version_ids: Collection[str]) -> None:
        """Free what this process kept for versions that left history."""
        for per_version in (self._recorders, self._verdicts, self._last_check, self._analysis):
            for version_id in [v for v in per_version if v not in version_ids]:
                del per_version[version_id]


def _short(value: object) -> str:
    """A bounded repr of a refused figure (a 400-digit int is not echoed whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_REPORTED_EVALUATIONS:
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
