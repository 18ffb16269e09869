"""RuleEngine: the evaluator's entry point. Route, evaluate, count; never raise for a broken rule.

``evaluate(event, key=...)`` reads the current serving snapshot once (from a :class:`ServingCell`
that a manager publishes into), routes the request by its key
(consistent hashing: the same key keeps its version for the whole rollout), evaluates it on the
routed table and counts the outcome for that version's health, all without a lock.

When a rule fails on an event (a run-time type mismatch, for example), the failure is counted
against the version that failed, and the event is answered by the stable version if the failure was
on a candidate. That answer is counted as the stable version's *fallback* (``HealthCounts.fallbacks``),
never as one of its evaluations: each version's figures count only the events routed to it, so a
canary or A/B comparison is not biased by the candidate's failures. If the stable version itself
fails, the answer is the bundle's ``on_error`` decision with ``Decision.error`` set. Before any version is active, the answer is a ``skip`` decision with
``error`` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from random import random
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

from mmh3 import hash as murmur3

from rule_engine.evaluation.table import Decision
from rule_engine.serving.recorder import SAMPLE_MASK
from rule_engine.serving.routing import hash_key
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot, SnapshotSource

if TYPE_CHECKING:
    from rule_engine.evaluation.table import RuleTable
    from rule_engine.serving.recorder import VersionRecorder

__all__ = ["NO_VERSION", "RuleEngine"]

NO_VERSION = Decision(decision="skip", error="no rule version is active")
_MASK64 = (1 << 64) - 1


class RuleEngine:
    """Evaluates events on whatever version is served for their key.

    ``source`` is a :class:`~rule_engine.DeploymentManager` or anything else exposing a
    ``serving_cell``, or a :class:`ServingCell` itself: the engine knows nothing else of the control
    plane (as LaunchDarkly's evaluator is fed read-only callables).

    The routing key is ``key`` when given, else the event's ``key_field`` (``user_id`` by default).
    A request with no key is served by the stable version: a canary only ever sees identifiable,
    sticky traffic.
    """

    __slots__ = ("_cell", "_source", "key_field")

    def __init__(self, source: SnapshotSource | ServingCell, *, key_field: str = "user_id") -> None:
        self._source = source
        self._cell: ServingCell = source if isinstance(source, ServingCell) else source.serving_cell
        self.key_field = key_field

    @property
    def manager(self) -> Any:
        """What this engine was built on (the manager, usually)."""
        return self._source

    def evaluate(self, event: Mapping[str, Any], key: Any = None) -> Decision:
        """Decide ``event`` on the version its routing key is assigned to. Never raises.

        Whatever the event (not a Mapping, a Mapping whose reads raise...) or the key (a lone
        surrogate, an int ``str()`` cannot convert...): a key that cannot be read or hashed is
        served by the stable version (docs/routing.md), and an event the rules cannot be
        evaluated on gets an error decision, counted against the version that failed.
        """
        snapshot = self._cell.current
        table = snapshot.stable
        if table is None:
            return NO_VERSION
        recorder = snapshot.stable_recorder
        candidate = snapshot.candidate
        if candidate is not None:  # --- route (routing.py's rule, inlined: tests/test_routing_one_rule.py) ---
            try:
                if key is None:
                    key = event.get(self.key_field)
                if snapshot.hash_only and type(key) is str and key.isascii():  # v2, no scope, no pins: the hash
                    if murmur3(key, snapshot.seed, False) < snapshot.limit:
                        table, recorder = candidate, snapshot.candidate_recorder
                elif (targeting := snapshot.targeting) is not None and (  # scope and pins (serving/targeting.py)
                    chosen := targeting.choose(event, key, table)
                ) is not None:
                    if chosen is candidate:  # decided by scope or pin: no hash
                        table, recorder = candidate, snapshot.candidate_recorder
                else:
                    if type(key) is str:  # hash_key's fast path, inlined: ASCII is its own UTF-8
                        data = key if key.isascii() else key.encode("utf-8", "surrogatepass")
                        request_hash: int | None = murmur3(data, snapshot.seed, False)
                    else:
                        request_hash = hash_key(key, snapshot.seed)
                    multiplier = snapshot.multiplier  # 0: algorithm 2, the hash is compared as is
                    if (
                        request_hash is not None
                        and ((multiplier * request_hash + snapshot.offset) & _MASK64 if multiplier else request_hash)
                        < snapshot.limit
                    ):
                        table = candidate
                        recorder = snapshot.candidate_recorder
            except Exception:  # the key could not be read or hashed: served by stable (docs/routing.md)
                pass
        # --- count (recorder.py): exact outcome counts, one call in SAMPLE_EVERY timed; TAPS (decision
        # log, shadow: serving/decisionlog.py) draw their own sample, and a tapped call is timed too ---
        taps = snapshot.taps
        tapped = taps is not None and random() < taps.rate
        if tapped or recorder is None or recorder.sample:
            return self._timed(snapshot, table, recorder, event, key, tapped)
        try:
            decision = table.evaluate(event)
        except Exception as exc:
            recorder.record_error()
            return self._failed(snapshot, table, exc, event, key, None)
        try:
            n = next(recorder.outcomes[decision])  # lock-free: one C call under the GIL
        except KeyError:
            n = recorder.count_new(decision)
        if not n & SAMPLE_MASK:
            recorder.sample = True  # time the next call
        return decision

    def _timed(
        self,
        snapshot: ServingSnapshot,
        table: RuleTable,
        recorder: VersionRecorder | None,
        event: Mapping[str, Any],
        key: Any,
        tapped: bool,
    ) -> Decision:
        """Evaluate, count and time one sampled (or tapped) call; offer it to the taps when ``tapped``."""
        if recorder is not None:
            recorder.sample = False
        start = perf_counter_ns()
        try:
            decision = table.evaluate(event)
        except Exception as exc:
            elapsed = perf_counter_ns() - start
            if recorder is not None:
                recorder.record_error(elapsed)
            return self._failed(snapshot, table, exc, event, key, elapsed)
        elapsed = perf_counter_ns() - start
        if recorder is not None:
            recorder.record(decision, elapsed)
        if tapped and snapshot.taps is not None:
            snapshot.taps.offer(snapshot, table, key, event, decision, elapsed)
        return decision

    def _failed(
        self,
        snapshot: ServingSnapshot,
        table: RuleTable,
        exc: Exception,
        event: Mapping[str, Any],
        key: Any,
        elapsed: int | None,
    ) -> Decision:
        """The answer to an event ``table`` failed on: stable's, if the candidate failed; else the error decision.

        The failure itself is always offered to the taps (``elapsed`` None: the call was not timed).
        """
        error = None
        if snapshot.taps is not None:
            error = table.error_decision(_describe(exc))
            snapshot.taps.offer(snapshot, table, key, event, error, elapsed)
        if table is snapshot.candidate and snapshot.stable is not None:
            return self._on_stable(snapshot.stable, snapshot.stable_recorder, event)
        return error if error is not None else table.error_decision(_describe(exc))

    @staticmethod
    def _on_stable(table: Any, recorder: Any, event: Mapping[str, Any]) -> Decision:
        """Answer an event that failed on the candidate; count it as a fallback, not as stable's evaluation."""
        try:
            decision: Decision = table.evaluate(event)
        except Exception as exc:
            if recorder is not None:
                recorder.record_fallback(failed=True)
            error: Decision = table.error_decision(_describe(exc))
            return error
        if recorder is not None:
            recorder.record_fallback(failed=False)
        return decision


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an evaluation failure; never raises (an event's own objects made it)."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:
        return f"{type(exc).__name__} (its message could not be rendered)"
