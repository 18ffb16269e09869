"""Prometheus metrics read at scrape time: values, names per the conventions, the text parser, Grafana."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rule_engine import DeploymentManager, HealthThresholds, RuleEngine
from rule_engine.observability.metrics import register
from tests._support_deployment import GATEWAY_V1, ROOT
from tests._support_server import ManualClock, canary_in_progress, make_app

NAME = re.compile(r"^rule_engine_[a-z][a-z0-9_]*$")
NON_BASE_UNITS = ("_ms", "_us", "_microseconds", "_milliseconds", "_minutes", "_percent", "_bytes_total_bytes")


def scrape(manager: DeploymentManager) -> str:
    registry = CollectorRegistry()
    register(manager, registry)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    found = [v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_evaluations_are_counted_per_version_and_role(clock: ManualClock) -> None:
    """What RuleEngine.evaluate counted shows up at scrape time, split by role during a canary."""
    manager = canary_in_progress(clock)
    engine = RuleEngine(manager)
    routed = [engine.evaluate({"request": {"path": "/healthz"}}, key=f"u{i}") for i in range(200)]
    text = scrape(manager)
    status = manager.get_rollout_status()
    assert status is not None
    on_candidate = sum(d.version_id == status.version_id for d in routed)
    assert value(text, "rule_engine_evaluations_total", role="candidate") == on_candidate
    assert value(text, "rule_engine_evaluations_total", role="stable") == 200 - on_candidate
    assert value(text, "rule_engine_decisions_total", role="stable", decision="allow") == 200 - on_candidate
    assert value(text, "rule_engine_evaluation_duration_seconds_count", role="candidate") == on_candidate
    assert 0 < value(text, "rule_engine_evaluation_duration_seconds_sum", role="stable") < 200  # seconds, not us
    assert value(text, "rule_engine_evaluation_errors_total", role="stable") == 0


def test_histogram_buckets_are_cumulative_and_end_at_the_count(clock: ManualClock) -> None:
    """Each bucket holds at least the one below it; +Inf equals the count."""
    manager = canary_in_progress(clock)
    engine = RuleEngine(manager)
    for i in range(100):
        engine.evaluate({}, key=str(i))
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in samples(scrape(manager)).items()
        if n == "rule_engine_evaluation_duration_seconds_bucket" and dict(ls)["role"] == "stable"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1][0] == float("inf")
    assert counts[-1] == value(scrape(manager), "rule_engine_evaluation_duration_seconds_count", role="stable")


def test_rollout_weight_stage_and_state(clock: ManualClock) -> None:
    """The canary's weight is a ratio (0.1 at 10%) and moves with the stage."""
    manager = canary_in_progress(clock)
    text = scrape(manager)
    assert value(text, "rule_engine_rollout_weight_ratio") == pytest.approx(0.1)
    assert value(text, "rule_engine_rollout_stage") == 1
    assert value(text, "rule_engine_rollout_in_progress") == 1
    assert value(text, "rule_engine_versions", state="rolling_out") == 1
    clock.advance(61)
    assert manager.advance_rollout(actor="t")
    text = scrape(manager)
    assert value(text, "rule_engine_rollout_weight_ratio") == pytest.approx(0.5)
    assert value(text, "rule_engine_rollout_stage") == 2


def test_rollbacks_are_counted_by_cause(clock: ManualClock) -> None:
    """A manual rollback counts as manual; an unhealthy candidate rolled back by the manager as automatic."""
    thresholds = HealthThresholds(min_evaluations=10)
    manager = DeploymentManager(clock=clock, thresholds=thresholds, auto_rollback=True)
    registry = CollectorRegistry()
    register(manager, registry)
    manager.activate_deployment(manager.prepare_deployment(GATEWAY_V1))
    v2 = manager.prepare_deployment(GATEWAY_V1, deployed_by="t")
    manager.activate_deployment(v2)
    manager.rollback(actor="t")
    assert value(generate_latest(registry).decode(), "rule_engine_rollbacks_total", cause="manual") == 1
    manager2 = canary_in_progress(clock)
    manager2.configure(auto_rollback=True, thresholds=thresholds)
    registry2 = CollectorRegistry()
    register(manager2, registry2)
    status = manager2.get_rollout_status()
    assert status is not None
    manager2.update_health_metrics(status.version_id, evaluations=100, errors=60)
    text = generate_latest(registry2).decode()
    assert value(text, "rule_engine_rollbacks_total", cause="automatic") == 1
    assert value(text, "rule_engine_rollbacks_total", cause="manual") == 0


def test_store_revision_and_follower_staleness(clock: ManualClock) -> None:
    """The revision served, and a stale follower, are visible."""
    manager = canary_in_progress(clock)
    text = scrape(manager)
    assert value(text, "rule_engine_store_revision") == manager.snapshot.revision
    assert value(text, "rule_engine_follower_stale") == 0
    manager._follower.stale_reason = "StoreError: unreachable"  # what the follower sets on a store failure
    assert value(scrape(manager), "rule_engine_follower_stale") == 1


def test_the_fleet_instances_by_status_and_convergence(clock: ManualClock) -> None:
    """Registered instances are counted by status; one serving an older share makes the fleet not converged."""
    manager = canary_in_progress(clock)
    manager.fleet.beat()
    text = scrape(manager)
    assert value(text, "rule_engine_fleet_instances", status="serving") == 1
    assert value(text, "rule_engine_fleet_instances", status="lagging") == 0
    assert value(text, "rule_engine_fleet_converged") == 1
    own = manager.store.instances()[0]
    manager.store.register_instance(replace(own, instance_id="other", percent=own.percent + 1))
    text = scrape(manager)
    assert value(text, "rule_engine_fleet_instances", status="lagging") == 1
    assert value(text, "rule_engine_fleet_converged") == 0


def test_scraping_changes_nothing(clock: ManualClock) -> None:
    """Two scrapes in a row give the same counters: reading is not draining."""
    manager = canary_in_progress(clock)
    RuleEngine(manager).evaluate({}, key="k")
    first, second = samples(scrape(manager)), samples(scrape(manager))
    assert {k: v for k, v in first.items() if k[0].endswith("_total")} == {
        k: v for k, v in second.items() if k[0].endswith("_total")
    }


def test_names_follow_the_prometheus_conventions(clock: ManualClock) -> None:
    """snake_case with the rule_engine_ prefix, _total on counters only, base units, no unit-less time."""
    manager = canary_in_progress(clock)
    RuleEngine(manager).evaluate({}, key="k")
    manager.rollback(actor="t")
    text = scrape(manager)
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert NAME.match(family.name), family.name
        assert not family.name.endswith(NON_BASE_UNITS), family.name
        assert family.documentation, family.name
        for sample in family.samples:
            assert NAME.match(sample.name)
            for label in sample.labels:
                assert re.fullmatch(r"[a-z][a-z0-9_]*", label), label
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            else:
                assert not sample.name.endswith("_total"), sample.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds")


def test_metrics_endpoint_on_serve(clock: ManualClock) -> None:
    """GET /metrics answers the text format the parser reads."""
    manager = canary_in_progress(clock)
    client = TestClient(make_app(manager, clock))
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert value(response.text, "rule_engine_rollout_in_progress", deployment="default") == 1


def test_the_grafana_dashboard_uses_only_exported_metrics(clock: ManualClock) -> None:
    """docs/grafana-dashboard.json is valid JSON and every rule_engine_ metric it queries exists."""
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    manager = canary_in_progress(clock)
    RuleEngine(manager).evaluate({}, key="k")
    exported = {s.name for f in text_string_to_metric_families(scrape(manager)) for s in f.samples}
    exported |= {"rule_engine_webhook_deliveries_total", "rule_engine_webhook_queue_depth"}  # with webhooks
    used = {name for expr in exprs for name in re.findall(r"rule_engine_[a-z0-9_]+", expr)}
    assert used
    assert used <= exported, used - exported


def test_register_on_an_application_registry(clock: ManualClock, tmp_path: Path) -> None:
    """register() adds to a registry the application already has; unregister and unsubscribe undo it."""
    manager = canary_in_progress(clock)
    registry = CollectorRegistry()
    collector = register(manager, registry, deployment="payments")
    assert value(generate_latest(registry).decode(), "rule_engine_rollout_in_progress", deployment="payments") == 1
    registry.unregister(collector)
    collector.unsubscribe()
    assert "rule_engine_" not in generate_latest(registry).decode()
