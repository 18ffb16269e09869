"""RuleEngine: decisions carry their version, broken rules never raise, counts are exact."""

from __future__ import annotations

import json
import threading

from freezegun import freeze_time

from rule_engine import Canary, DeploymentManager, RuleEngine, parse_bundle
from tests._support_health import START, THRESHOLDS, bundle, drive, event, manager_with_stable
from tests.reference import reference_match


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
    """Odd events get the bundle's answer, or its on_error decision with ``error`` set; never an exception.

    Non-objects cannot be evaluated (on_error, marked as an error); objects with unhashable agent/flow
    ids or routing keys are routed anyway and answered as the reference interpreter says.
    """
    manager, stable = manager_with_stable()
    candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((50, 100), 60))
    manager.activate_deployment(candidate)
    engine = RuleEngine(manager)
    spec = parse_bundle(json.dumps(bundle("1.0.0")))  # 2.0.0 has the same rules
    assert spec.default is not None
    assert spec.on_error is not None

    def expected(item: dict[str, object]) -> str:
        matched = [r for r in sorted(spec.rules, key=lambda r: -r.priority) if reference_match(r.when, item)]
        return matched[0].then.decision if matched else spec.default.decision  # type: ignore[union-attr]

    not_objects: list[object] = [[1, 2], None, "text", 3.5]
    for item in not_objects:
        decision = engine.evaluate(item)  # type: ignore[arg-type]
        assert (decision.decision, decision.is_error) == (spec.on_error.decision, True), item
        assert decision.error, item
        assert decision.version_id in (stable, candidate)
    odd_objects: list[dict[str, object]] = [
        {"user_id": [1]},
        {"agent_id": [1], "flow_id": {}},
        {"user_id": {"a": 1}},
        {"user_id": [1], "banned": True},
        {"agent_id": {"x": [1]}, "banned": True},
    ]
    for odd in odd_objects:
        decision = engine.evaluate(odd)
        assert decision.error is None, odd
        assert decision.decision == expected(odd), odd
        assert decision.version_id in (stable, candidate)
    keyed = engine.evaluate({"x": 1}, key=[1, 2])  # type: ignore[arg-type]
    assert (keyed.decision, keyed.error) == ("allow", None)


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
