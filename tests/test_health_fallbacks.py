"""Fallback accounting (D4): each arm's figures count only the events routed to it; fallbacks apart.

An event that fails on the candidate is answered by the stable version. That answer is the stable
version's *fallback*, never one of its evaluations, so identical bundles in an A/B test are not
reported significantly different whatever the traffic and its error rate.
"""

from __future__ import annotations

import os
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from rule_engine import ABTest, Canary, DeploymentManager, RuleEngine
from rule_engine.serving.counts import HealthCounts
from tests._support_health import THRESHOLDS, ManualClock, bundle, event

SOAK = os.environ.get("RULE_ENGINE_SOAK") == "1"
ALPHA = 0.05  # the documented alpha of get_experiment_report()


def _identical_ab(share: float) -> tuple[DeploymentManager, RuleEngine, str, str]:
    manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=False, clock=ManualClock())
    a = manager.prepare_deployment(bundle("1.0.0", checks_amount=True))
    manager.activate_deployment(a)
    b = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), ABTest(share, 3600))
    manager.activate_deployment(b)
    return manager, RuleEngine(manager), a, b


def _run(engine: RuleEngine, manager: DeploymentManager, rng: random.Random, n: int, error_rate: float) -> Counter[str]:
    """``n`` events with random keys, each bad (fails both bundles) with ``error_rate``; calls per routed arm."""
    routed: Counter[str] = Counter()
    for i in range(n):
        key = f"k{rng.getrandbits(48)}"
        table = manager.route(key)
        assert table is not None
        routed[str(table.version_id)] += 1
        engine.evaluate({**event(i, bad=rng.random() < error_rate), "user_id": key})
    return routed


def test_a_fallback_is_not_an_evaluation_of_the_stable_version() -> None:
    """An event that breaks the candidate: an error of the candidate, a fallback (not an evaluation) of stable."""
    manager = DeploymentManager(thresholds=THRESHOLDS, clock=ManualClock())
    stable = manager.prepare_deployment(bundle("1.0.0"))
    manager.activate_deployment(stable)
    candidate = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), Canary((50, 100), 60))
    manager.activate_deployment(candidate)
    engine = RuleEngine(manager)
    events = [event(i, bad=True) for i in range(0, 800, 2)]  # never banned: the candidate's rule fails
    routed = Counter(getattr(manager.route(e["user_id"]), "version_id", None) for e in events)
    answers = [engine.evaluate(e) for e in events]
    assert {d.version_id for d in answers} == {stable}
    assert all(d.error is None for d in answers)
    assert routed[candidate] > 100
    cand, base = manager.get_deployment_info(candidate), manager.get_deployment_info(stable)
    assert cand is not None
    assert base is not None
    assert cand.health_metrics.total_evaluations == cand.health_metrics.error_count == routed[candidate]
    assert (base.health_metrics.total_evaluations, base.health_metrics.error_count) == (routed[stable], 0)
    assert (base.health_metrics.fallbacks, base.health_metrics.fallback_errors) == (routed[candidate], 0)
    as_json = base.health_metrics.to_dict()
    assert as_json["fallbacks"] == as_json["window"]["fallbacks"] == routed[candidate]


def test_a_fallback_the_stable_version_fails_too_is_a_fallback_error() -> None:
    """Stable failing on a candidate's failed event: on_error answer, counted as fallback_errors only."""
    manager, engine, a, b = _identical_ab(0.99)
    key = next(k for k in (f"k{i}" for i in range(1000)) if getattr(manager.route(k), "version_id", None) == b)
    decision = engine.evaluate({**event(2, bad=True), "user_id": key})
    assert decision.error is not None
    assert decision.version_id == a
    manager.get_deployment_info(a)  # flushes this process's counters to the store
    counts = manager.store.health([a, b])
    assert counts[a] == HealthCounts(fallbacks=1, fallback_errors=1)
    assert (counts[b].evaluations, counts[b].errors) == (1, 1)


def test_fallbacks_survive_a_store_round_trip(tmp_path: object) -> None:
    """HealthCounts keep fallbacks through to_dict/from_dict; counts stored without them read as zero."""
    counts = HealthCounts(evaluations=3, errors=1, fallbacks=2, fallback_errors=1)
    assert HealthCounts.from_dict(counts.to_dict()) == counts
    assert HealthCounts.from_dict({"evaluations": 3}).fallbacks == 0
    assert bool(HealthCounts(fallbacks=1))
    assert (counts + counts).fallbacks == 4


@settings(max_examples=25 if not SOAK else 300)
@given(
    share=st.sampled_from([0.1, 0.5, 0.9]),
    error_rate=st.floats(0.0, 1.0),
    n=st.integers(1, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_health_totals_equal_the_calls_routed_to_each_arm(share: float, error_rate: float, n: int, seed: int) -> None:
    """Whatever the traffic: each arm's evaluations are its routed calls; A's fallbacks are B's errors."""
    manager, engine, a, b = _identical_ab(share)
    routed = _run(engine, manager, random.Random(seed), n, error_rate)
    report = manager.get_experiment_report()
    assert (report.a.evaluations, report.b.evaluations) == (routed[a], routed[b])
    assert report.a.evaluations + report.b.evaluations == n
    assert report.a.fallbacks == report.b.errors == report.a.fallback_errors  # identical: A fails them too
    assert report.b.fallbacks == 0


def test_identical_bundles_are_significantly_different_at_about_alpha() -> None:
    """A/B of identical bundles over many seeds, error rates and shares: false-positive rate near alpha."""
    seeds = 1000 if SOAK else 160
    events = 3000 if SOAK else 1200
    positives = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        manager, engine, _a, _b = _identical_ab(rng.choice([0.1, 0.3, 0.5]))
        _run(engine, manager, rng, events, rng.choice([0.02, 0.1, 0.3]))
        report = manager.get_experiment_report()
        assert report.alpha == ALPHA
        positives += report.significant
    rate = positives / seeds
    print(f"identical A/B: {positives} of {seeds} seeds significant at alpha={ALPHA} (rate {rate:.3f})")
    bound = ALPHA + 4 * (ALPHA * (1 - ALPHA) / seeds) ** 0.5  # alpha plus four standard errors
    assert rate <= bound


_TEXT = st.text(st.characters(codec="utf-8"), max_size=8)  # surrogate keys: routing's own tests (D1)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_KEYS = _TEXT | st.integers(-(10**6), 10**6) | st.none()
_EVENTS = st.lists(st.fixed_dictionaries({"user_id": _KEYS, "amount": _JSON, "banned": _JSON}) | _JSON, max_size=60)


@settings(max_examples=40 if not SOAK else 400)
@given(events=_EVENTS, kind=st.sampled_from(["canary", "ab"]))
def test_every_call_is_counted_once_in_one_arm_whatever_the_event(events: list[object], kind: str) -> None:
    """Odd events during a canary or an A/B test: evaluations of both arms add up to the calls, fallbacks apart."""
    manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=False, clock=ManualClock())
    a = manager.prepare_deployment(bundle("1.0.0", checks_amount=True))
    manager.activate_deployment(a)
    strategy = Canary((50, 100), 60) if kind == "canary" else ABTest(0.5, 3600)
    b = manager.prepare_deployment(bundle("2.0.0", checks_amount=True), strategy)
    manager.activate_deployment(b)
    engine = RuleEngine(manager)
    for item in events:
        engine.evaluate(item)  # type: ignore[arg-type]
    manager.get_deployment_info(a)  # flushes
    counts = manager.store.health([a, b])
    assert counts[a].evaluations + counts[b].evaluations == len(events)
    assert counts[a].fallbacks == counts[b].errors
    assert counts[b].fallbacks == 0
