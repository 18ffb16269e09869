"""Shadow evaluation: a candidate decides a sample of live events off the request thread; disagreement counted."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rule_engine import DeploymentManager, RuleEngine, RuleTable, load_bundle
from rule_engine.cli.demo import make_event
from rule_engine.health.shadow import ShadowPolicy
from rule_engine.observability.decisions import DecisionLogWriter
from rule_engine.observability.metrics import register
from rule_engine.observability.views import status_view
from rule_engine.serving.decisionlog import DecisionLog, Taps
from rule_engine.serving.shadow import MAX_GROUPS, ShadowEvaluator, ShadowReport, shadow_of, start_shadow, stop_shadow

ROOT = Path(__file__).resolve().parent.parent
V1, V2, V3 = (str(ROOT / "bundles" / f"gateway-{n}.json") for n in ("v1", "v2", "v3-broken"))


def table(path: str) -> RuleTable:
    return RuleTable.from_bundle(load_bundle(path))


def demo(n: int, seed: int = 11) -> list[tuple[dict[str, Any], str]]:
    rng = random.Random(seed)
    return [make_event(rng) for _ in range(n)]


def serving_v1() -> DeploymentManager:
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(load_bundle(V1)))
    return manager


def attach(manager: DeploymentManager, shadow: ShadowEvaluator) -> None:
    manager.serving_cell.attach(Taps(None, shadow))


def test_disagreement_is_counted_exactly_by_agent_flow_and_decision() -> None:
    """At rate 1 every event is shadowed; the groups equal an independent comparison of both tables."""
    manager = serving_v1()
    shadow = ShadowEvaluator(table(V2), sample_rate=1.0, max_queue=1000)
    attach(manager, shadow)
    engine = RuleEngine(manager)
    traffic = demo(600)
    served = [engine.evaluate(event, key) for event, key in traffic]
    assert shadow.run_pending() == 600
    v2 = table(V2)
    expected: Counter[tuple[str, str, str, str]] = Counter()
    other_rule = 0
    for (event, _), answer in zip(traffic, served, strict=True):
        c = v2.evaluate(event)
        if c.decision != answer.decision:
            expected[event["agent_id"], event["flow_id"], answer.decision, c.decision] += 1
        elif c.rule_id != answer.rule_id:
            other_rule += 1
    report = shadow.report()
    assert dict(report.groups) == dict(expected)
    assert expected
    assert report.disagreements == sum(expected.values())
    assert report.same_decision_other_rule == other_rule
    assert (report.evaluations, report.errors, report.compared) == (600, 0, 600)
    assert report.disagreement_rate == report.disagreements / 600
    assert all(d.version_id == manager.get_active_version_id() for d in served)  # never served


def test_candidate_errors_are_counted_not_compared() -> None:
    """A candidate that raises (v3-broken on string session ages) counts errors; only evaluated events are compared."""
    manager = serving_v1()
    shadow = ShadowEvaluator(table(V3), sample_rate=1.0, max_queue=1000)
    attach(manager, shadow)
    engine = RuleEngine(manager)
    traffic = demo(300)
    for event, key in traffic:
        engine.evaluate(event, key)
    shadow.run_pending()
    v3 = table(V3)
    raising = 0
    for event, _ in traffic:
        try:
            v3.evaluate(event)
        except Exception:
            raising += 1
    report = shadow.report()
    assert report.errors == raising > 0
    assert report.compared == 300 - raising
    assert ShadowPolicy(min_compared=10).judge(report).action == "abort"


def test_a_full_shadow_queue_drops_without_blocking() -> None:
    """With no worker, events past ``max_queue`` are dropped and counted; the request path never waits."""
    manager = serving_v1()
    shadow = ShadowEvaluator(table(V2), sample_rate=1.0, max_queue=5)
    attach(manager, shadow)
    engine = RuleEngine(manager)
    for event, key in demo(20):
        engine.evaluate(event, key)
    report = shadow.report()
    assert (report.sampled, report.dropped) == (20, 15)
    assert shadow.run_pending() == 5


def test_only_a_sample_is_shadowed() -> None:
    """At rate 0 nothing is shadowed; sampling is per call and never touches the answer."""
    manager = serving_v1()
    shadow = ShadowEvaluator(table(V2), sample_rate=0.0)
    attach(manager, shadow)
    for event, key in demo(100):
        RuleEngine(manager).evaluate(event, key)
    assert shadow.report().sampled == 0


def test_started_shadow_counts_every_sampled_event_once() -> None:
    """With the worker thread running: after stop, every sampled event was either evaluated or dropped."""
    manager = serving_v1()
    shadow = start_shadow(manager, table(V2), sample_rate=0.5, max_queue=64)
    assert shadow_of(manager) is shadow
    engine = RuleEngine(manager)
    for event, key in demo(500):
        engine.evaluate(event, key)
    shadow.run_pending()
    report = stop_shadow(manager, shadow)
    assert shadow_of(manager) is None
    assert report.evaluations + report.dropped == report.sampled > 0


def test_shadow_decisions_are_logged_with_role_shadow() -> None:
    """A decision log attached with the shadow logs the candidate's sampled decisions as role ``shadow``."""
    manager = serving_v1()
    log = DecisionLog(sample_rate=1.0)
    shadow = ShadowEvaluator(table(V2), sample_rate=1.0, log=log)
    manager.serving_cell.attach(Taps(log, shadow))
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.extend(text.splitlines())

        def close(self) -> None:
            pass

    writer = DecisionLogWriter(log, Sink())
    for event, key in demo(10):
        RuleEngine(manager).evaluate(event, key)
    shadow.run_pending()
    writer.flush()
    roles = Counter(json.loads(line)["role"] for line in lines)
    assert roles == {"stable": 10, "shadow": 10}
    v2 = table(V2)
    shadowed = [json.loads(line) for line in lines if '"role":"shadow"' in line]
    assert all(r["decision"] == v2.evaluate(r["event"]).decision for r in shadowed)


def test_groups_are_bounded() -> None:
    """Past ``MAX_GROUPS`` distinct groups, disagreements are folded into ``(other)``, still counted."""
    shadow = ShadowEvaluator(table(V2), sample_rate=1.0, max_queue=MAX_GROUPS + 50)
    for i in range(MAX_GROUPS + 20):
        shadow._count({"agent_id": f"a{i}", "flow_id": "f"}, "allow", "deny")
    groups = shadow._groups
    assert len(groups) == MAX_GROUPS + 1
    assert groups["(other)", "(other)", "(other)", "(other)"] == 20


@pytest.mark.parametrize(
    ("figures", "action"),
    [
        ({"evaluations": 100}, "hold"),  # too few compared
        ({"evaluations": 1000, "disagreements": 10}, "proceed"),
        ({"evaluations": 1000, "disagreements": 50}, "proceed"),  # equal to the threshold passes
        ({"evaluations": 1000, "disagreements": 51}, "hold"),
        ({"evaluations": 1000, "disagreements": 251}, "abort"),
        ({"evaluations": 1000, "errors": 1}, "hold"),
        ({"evaluations": 1000, "errors": 51}, "abort"),
        ({"evaluations": 10, "errors": 10}, "abort"),  # errors abort before min_compared
    ],
)
def test_the_policy_holds_aborts_or_proceeds(figures: dict[str, int], action: str) -> None:
    """Thresholds on disagreement and errors: hold under ``max_*``, abort over ``abort_*``, else proceed."""
    assert ShadowPolicy().judge(ShadowReport("v", 0.1, **figures)).action == action


def test_policy_thresholds_are_validated() -> None:
    """Rates outside 0..1, NaN, or an abort threshold under its hold threshold are refused."""
    for bad in ({"max_disagreement_rate": 1.5}, {"abort_error_rate": float("nan")}, {"min_compared": -1}):
        with pytest.raises(ValueError, match="must be"):
            ShadowPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="abort thresholds"):
        ShadowPolicy(max_disagreement_rate=0.3, abort_disagreement_rate=0.2)


def test_status_and_metrics_show_the_shadow_and_the_log() -> None:
    """``status --json`` has ``shadow`` (figures and verdict) and ``decision_log``; /metrics has their counters."""
    manager = serving_v1()
    assert "shadow" not in status_view(manager, "memory://")
    log = DecisionLog(sample_rate=1.0, max_queue=2)
    shadow = ShadowEvaluator(table(V2), sample_rate=1.0)
    manager.serving_cell.attach(Taps(log, shadow))
    for event, key in demo(50):
        RuleEngine(manager).evaluate(event, key)
    shadow.run_pending()
    view = status_view(manager, "memory://")
    report = shadow.report()
    assert view["shadow"]["disagreements"] == report.disagreements > 0
    assert view["shadow"]["verdict"]["action"] == "hold"  # 50 of 500 compared
    assert view["decision_log"] == {"sample_rate": 1.0, "sampled": 50, "dropped": 48, "pending": 2}
    registry = CollectorRegistry()
    register(manager, registry, deployment="gw")
    text = generate_latest(registry).decode()
    assert f'rule_engine_shadow_evaluations_total{{deployment="gw",version="{report.version_id or ""}"}} 50.0' in text
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rule_engine_shadow_disagreements_total{")
    )
    assert total == report.disagreements
    assert 'rule_engine_decision_log_dropped_total{deployment="gw"} 48.0' in text


@pytest.mark.parametrize(("rate", "size"), [(1.5, 10), (-0.1, 10), (True, 10), (0.1, 0), (0.1, 2.5)])
def test_sampling_options_are_validated(rate: Any, size: Any) -> None:
    """A sample rate outside [0, 1] or a queue size that is not a positive integer is refused, for both taps."""
    with pytest.raises(ValueError, match="must be"):
        ShadowEvaluator(table(V1), sample_rate=rate, max_queue=size)
    with pytest.raises(ValueError, match="must be"):
        DecisionLog(sample_rate=rate, max_queue=size)
