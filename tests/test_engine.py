"""RuleEngine: decisions carry their version, broken rules never raise, counts are exact."""

from __future__ import annotations

import threading
import time

from freezegun import freeze_time

from rule_engine import Canary, DeploymentManager, RuleEngine
from tests._support_health import START, THRESHOLDS, bundle, drive, event, manager_with_stable


def test_decisions_carry_the_version_that_answered() -> None:
    """Every decision names the version that served it."""
    manager, stable = manager_with_stable()
    engine = RuleEngine(manager)
    assert {d.version_id for d in drive(engine, 100)} == {stable}
    assert engine.evaluate(event(1)).decision == "deny"


def test_before_activation_the_answer_is_skip_with_an_error() -> None:
    """With nothing active, evaluate answers ``skip`` with ``error`` set instead of raising."""
    decision = RuleEngine(DeploymentManager()).evaluate(event(1))
    assert decision.decision == "skip"
    assert decision.is_error


def test_error_on_the_only_serving_version_gives_on_error_decision() -> None:
    """A rule failing on the stable version gives the bundle's on_error decision, marked as an error."""
    manager = DeploymentManager(thresholds=THRESHOLDS)
    stable = manager.prepare_deployment(bundle("1.0.0", checks_amount=True, on_error="review"))
    manager.activate_deployment(stable)
    decision = RuleEngine(manager).evaluate(event(2, bad=True))
    assert decision.decision == "review"
    assert decision.error is not None
    assert decision.version_id == stable
    verdict_counts = manager.get_deployment_info(stable)
    assert verdict_counts is not None
    assert verdict_counts.health_metrics.error_count == 1


def test_error_on_the_candidate_is_answered_by_stable_and_counted_against_candidate() -> None:
    """An event that breaks the candidate gets stable's answer; the error counts against the candidate, the answer as a fallback."""
    with freeze_time(START):
        manager, stable = manager_with_stable(auto_rollback=False)
        candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), Canary((50, 100), 60))
        manager.activate_deployment(candidate)
        answers = drive(RuleEngine(manager), 2000, error_every=1)  # every event breaks the candidate
        assert all(d.error is None for d in answers)
        assert {d.decision for d in answers if d.version_id == candidate} == {"deny"}  # banned: matched first
        cand = manager.get_deployment_info(candidate)
        base = manager.get_deployment_info(stable)
        assert cand is not None
        assert base is not None
        cand_deny = sum(1 for d in answers if d.version_id == candidate)
        assert cand.health_metrics.error_count == cand.health_metrics.total_evaluations - cand_deny > 800
        assert base.health_metrics.error_count == 0
        assert base.health_metrics.total_evaluations == 2000 - cand.health_metrics.total_evaluations  # its share
        assert base.health_metrics.fallbacks == cand.health_metrics.error_count  # counted apart (D4)


def test_odd_events_never_raise() -> None:
    """Non-dict events, unhashable agent/flow ids and unhashable keys give decisions, not exceptions."""
    manager, _ = manager_with_stable()
    candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((50, 100), 60))
    manager.activate_deployment(candidate)
    engine = RuleEngine(manager)
    odd: list[object] = [
        [1, 2],
        None,
        "text",
        {"user_id": [1]},
        {"agent_id": [1], "flow_id": {}},
        {"user_id": {"a": 1}},
    ]
    for item in odd:
        decision = engine.evaluate(item)  # type: ignore[arg-type]
        assert isinstance(decision.decision, str)
    assert engine.evaluate({"x": 1}, key=[1, 2]).decision == "allow"
    assert engine.evaluate([1, 2]).is_error  # type: ignore[arg-type]


def test_counts_from_eight_threads_add_up_exactly() -> None:
    """Lock-free per-thread shards lose no count: 8 threads x 5,000 evaluations are all counted."""
    manager, stable = manager_with_stable()
    engine = RuleEngine(manager)
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        barrier.wait()
        drive(engine, 5000, error_every=0, prefix=f"t{t}-")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    # drain concurrently with recording: nothing may be lost or counted twice
    for _ in range(20):
        manager.get_health_status(stable)
    for thread in threads:
        thread.join(30)
    info = manager.get_deployment_info(stable)
    assert info is not None
    metrics = info.health_metrics
    assert metrics.total_evaluations == 40_000
    assert sum(info.health_metrics.window.decisions.values()) == 40_000
    assert info.health_metrics.window.decisions["deny"] == 8 * 500


def test_recording_overhead_sanity() -> None:
    """Evaluating with recording runs; the cost is printed for information, not asserted."""
    manager, stable = manager_with_stable()
    engine = RuleEngine(manager)
    table = manager.get_active_table()
    assert table is not None
    events = [event(i) for i in range(2000)]
    began = time.perf_counter()
    for e in events:
        table.evaluate(e)
    bare = time.perf_counter() - began
    began = time.perf_counter()
    for e in events:
        engine.evaluate(e)
    engine_secs = time.perf_counter() - began
    print(f"table.evaluate {bare / 2000 * 1e6:.2f}us, RuleEngine.evaluate {engine_secs / 2000 * 1e6:.2f}us")
    assert manager.get_deployment_info(stable).health_metrics.total_evaluations == 2000  # type: ignore[union-attr]
