"""Recording: exact counts on every call, timing on one call in SAMPLE_EVERY, estimates that add up."""

from __future__ import annotations

import json
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from rule_engine import RuleEngine, parse_bundle
from rule_engine.evaluation.table import RuleTable
from rule_engine.serving.recorder import SAMPLE_EVERY, VersionRecorder
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot


def _table() -> RuleTable:
    rules = [
        {"id": "gold", "then": {"decision": "allow"}, "when": {"field": "tier", "op": "eq", "value": "gold"}},
        {"id": "big", "then": {"decision": "review"}, "when": {"field": "amount", "op": "gt", "value": 100}},
    ]
    text = json.dumps({"bundle_id": "r", "version": "1", "rules": rules, "default": {"decision": "deny"}})
    return RuleTable.from_bundle(parse_bundle(text), version_id="v1")


def _engine(deadline_us: float = 1e9) -> tuple[RuleEngine, VersionRecorder]:
    recorder = VersionRecorder("v1", deadline_us)
    return RuleEngine(ServingCell(ServingSnapshot.build(_table(), None, None, 0, stable_recorder=recorder))), recorder


EVENTS = [{"tier": "gold"}, {"amount": 500}, {"tier": "x"}, {"amount": "many"}]  # the last one fails


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=300))
def test_counts_are_exact_whatever_the_calls(picks: list[int]) -> None:
    """Evaluations, errors and decisions are exact; the histogram sums to the evaluations."""
    engine, recorder = _engine()
    for i in picks:
        engine.evaluate(EVENTS[i])
    counts = recorder.drain()
    assert counts.evaluations == len(picks)
    assert counts.errors == picks.count(3)
    expected = {"allow": picks.count(0), "review": picks.count(1), "deny": picks.count(2)}
    assert dict(counts.decisions) == {k: v for k, v in expected.items() if v}
    assert sum(counts.histogram) == (len(picks) if picks else 0)
    assert recorder.drain().evaluations == 0  # nothing counted twice


def test_one_call_in_sample_every_is_timed() -> None:
    """Of N calls giving one decision, N / SAMPLE_EVERY are timed (the first among them)."""
    engine, recorder = _engine()
    calls = 100 * SAMPLE_EVERY
    for _ in range(calls):
        engine.evaluate(EVENTS[0])
    timed = sum(s.timed for s in recorder._shards)
    assert timed == calls // SAMPLE_EVERY


def test_every_drained_period_with_calls_has_a_timed_call() -> None:
    """A drain makes the next call timed, so a period's latency is never missing (one call is enough)."""
    engine, recorder = _engine()
    for _ in range(3):
        engine.evaluate(EVENTS[0])
    recorder.drain()
    engine.evaluate(EVENTS[0])
    counts = recorder.drain()
    assert counts.evaluations == 1
    assert sum(counts.histogram) == 1
    assert counts.latency_sum_us > 0


def test_a_deadline_no_call_meets_makes_every_evaluation_a_timeout() -> None:
    """Timeouts are estimated from the timed calls: all of them over the deadline -> all evaluations."""
    engine, recorder = _engine(deadline_us=0.0)
    for i in range(1000):
        engine.evaluate(EVENTS[i % 3])
    counts = recorder.drain()
    assert counts.evaluations == 1000
    assert counts.timeouts == 1000


def test_a_generous_deadline_gives_no_timeouts() -> None:
    """No timed call over the deadline: no timeouts."""
    engine, recorder = _engine(deadline_us=1e9)
    for i in range(1000):
        engine.evaluate(EVENTS[i % 3])
    assert recorder.drain().timeouts == 0


def test_counts_from_threads_are_exact() -> None:
    """Eight threads counting the same decisions without a lock lose nothing."""
    engine, recorder = _engine()
    per_thread = 5000

    def work() -> None:
        for i in range(per_thread):
            engine.evaluate(EVENTS[i % 3])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    counts = recorder.totals()
    assert counts.evaluations == 8 * per_thread
    assert sum(counts.decisions.values()) == 8 * per_thread
    assert sum(counts.histogram) == 8 * per_thread


def test_totals_and_drains_agree_on_exact_figures() -> None:
    """The lifetime totals equal the sum of the drains for everything counted exactly."""
    engine, recorder = _engine()
    drained = []
    for round_ in range(5):
        for i in range(37 * (round_ + 1)):
            engine.evaluate(EVENTS[i % 4])
        drained.append(recorder.drain())
    total = recorder.totals()
    assert total.evaluations == sum(d.evaluations for d in drained)
    assert total.errors == sum(d.errors for d in drained)
    assert sum(total.decisions.values()) == sum(sum(d.decisions.values()) for d in drained)
