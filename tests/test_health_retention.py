"""Per-rule match counts, and how long health buckets are kept."""

from __future__ import annotations

from pathlib import Path

from freezegun import freeze_time

from rule_engine import ABTest, BlueGreen, DeploymentManager, HealthThresholds, RuleEngine
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.sqlite import SQLiteStore

BUNDLES = Path(__file__).parent.parent / "bundles"
LOGIN_FROM_KP = {"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "KP"}, "risk_score": 0.1}
ORDINARY = {"agent_id": "api_gateway", "flow_id": "search", "geo": {"country": "FR"}, "risk_score": 0.1}
THRESHOLDS = HealthThresholds(window_secs=60, bucket_secs=5, min_evaluations=10)


def test_rule_matches_are_counted_per_rule_outside_the_table() -> None:
    """Each decision served is counted against the rule that made it ("" for the default decision)."""
    manager = DeploymentManager()
    version = manager.prepare_deployment(BUNDLES / "gateway-v2.json")
    manager.activate_deployment(version)
    engine = RuleEngine(manager)
    for i in range(30):
        engine.evaluate({**LOGIN_FROM_KP, "user_id": f"u{i}"})
    for i in range(12):
        engine.evaluate({**ORDINARY, "user_id": f"u{i}"})
    info = manager.get_deployment_info(version)
    assert info is not None
    assert info.health_metrics.rule_matches == {"deny-blocked-country": 30, "": 12}
    assert info.health_metrics.to_dict()["rule_matches"] == {"deny-blocked-country": 30, "": 12}


def test_rule_matches_survive_the_sqlite_store(tmp_path: Path) -> None:
    """Per-rule counts are part of the stored counters, so they add up across processes and restarts."""
    store = SQLiteStore(tmp_path / "state.db")
    store.add_health("v", 0.0, HealthCounts(3, rules={"r1": 2, "": 1}))
    store.add_health("v", 5.0, HealthCounts(2, rules={"r1": 2}))
    assert dict(store.health(["v"])["v"].rules) == {"r1": 4, "": 1}
    store.close()


def test_tick_prunes_old_buckets_but_keeps_lifetime_totals() -> None:
    """Buckets older than two windows are dropped by tick(); lifetime totals and verdict windows stay right."""
    with freeze_time("2026-01-01 00:00:00") as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS)
        version = manager.prepare_deployment(BUNDLES / "gateway-v1.json")
        manager.activate_deployment(version)
        manager.update_health_metrics(version, 100, 0, avg_latency_us=10.0)
        clock.tick(600)
        manager.update_health_metrics(version, 50, 0, avg_latency_us=10.0)
        manager.tick()
        assert manager.store.health([version], since=0.0)[version].evaluations == 50  # old bucket pruned
        assert manager.store.health([version])[version].evaluations == 150  # lifetime kept
        info = manager.get_deployment_info(version)
        assert info is not None
        assert info.health_metrics.total_evaluations == 150


def test_pruning_keeps_what_a_running_experiment_report_needs() -> None:
    """An A/B test longer than the retention window still reports every evaluation since it started."""
    with freeze_time("2026-01-01 00:00:00") as clock:
        manager = DeploymentManager(thresholds=THRESHOLDS)
        a = manager.prepare_deployment(BUNDLES / "gateway-v1.json", BlueGreen())
        manager.activate_deployment(a)
        b = manager.prepare_deployment(BUNDLES / "gateway-v2.json", ABTest(0.5, test_duration_secs=3600))
        manager.activate_deployment(b)
        manager.update_health_metrics(a, 400, 4)
        manager.update_health_metrics(b, 400, 20)
        clock.tick(1200)  # 20 windows later
        manager.tick()
        report = manager.get_experiment_report()
        assert (report.a.evaluations, report.b.evaluations) == (400, 400)
        assert report.significant
