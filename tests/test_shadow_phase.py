"""A rollout's stored shadow phase: the candidate runs in the shadow of the stable version, then the
controller proceeds (first canary stage, or the blue-green switch), aborts, or holds on the fleet's
disagreement figures (docs/safety.md, section 7)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from rule_engine import BlueGreen, Canary, DeploymentManager, RuleEngine, RuleTable, ShadowOptions, load_bundle
from rule_engine.cli import cli
from rule_engine.cli.demo import make_event
from rule_engine.control.records import Rollout
from rule_engine.control.shadow_phase import end_shadow
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import strategy_from_dict
from rule_engine.control.transitions import activate, advance
from rule_engine.errors import InvalidStrategyError
from rule_engine.health.shadow import counts_of_report, report_of_counts, shadow_key
from rule_engine.observability.metrics import register
from rule_engine.serving.counts import HealthCounts
from rule_engine.serving.shadow import MAX_GROUPS, OTHER, ShadowReport, shadow_of
from rule_engine.stores.base import StateStore, open_store
from rule_engine.testing.builders import control_state, version_record
from tests.strategies import canaries

ROOT = Path(__file__).resolve().parent.parent
V1, V2, V3 = (str(ROOT / "bundles" / f"gateway-{n}.json") for n in ("v1", "v2", "v3-broken"))
T0 = "2026-03-01 12:00:00"


def traffic(n: int, seed: int = 11) -> list[tuple[dict[str, Any], str]]:
    rng = random.Random(seed)
    return [make_event(rng) for _ in range(n)]


def disagreements(candidate: str, events: list[tuple[dict[str, Any], str]]) -> Counter[tuple[str, str, str, str]]:
    """An independent count of what the candidate decides differently from v1 (both tables, directly)."""
    stable, other = RuleTable.from_bundle(load_bundle(V1)), RuleTable.from_bundle(load_bundle(candidate))
    found: Counter[tuple[str, str, str, str]] = Counter()
    for event, _ in events:
        a, b = stable.evaluate(event), other.evaluate(event)
        if a.decision != b.decision:
            found[(event["agent_id"], event["flow_id"], a.decision, b.decision)] += 1
    return found


def serving_v1(manager: DeploymentManager) -> str:
    version = manager.prepare_deployment(load_bundle(V1))
    manager.activate_deployment(version)
    return version


def serve(manager: DeploymentManager, events: list[tuple[dict[str, Any], str]]) -> list[str]:
    """Evaluate ``events`` as live traffic, wait for the shadow worker to decide them all; the served versions."""
    engine = RuleEngine(manager)
    served = [manager.route(key, event).version_id for event, key in events]  # type: ignore[union-attr]
    for event, key in events:
        engine.evaluate(event, key)
    shadow = shadow_of(manager)
    assert shadow is not None
    assert shadow.settle()
    return served


def shadowed(**options: Any) -> Canary:
    return Canary(stages=(10, 100), stage_duration_secs=60, shadow=ShadowOptions(1.0, **options))


def test_a_shadow_phase_proceeds_to_the_first_canary_stage_when_the_candidate_agrees() -> None:
    """0% of traffic during the phase; the counts are exact; `proceed` starts stage 1 (10%), audited."""
    events = traffic(600)
    expected = disagreements(V2, events)
    with freeze_time(T0) as clock:
        manager = DeploymentManager()
        stable = serving_v1(manager)
        candidate = manager.prepare_deployment(
            load_bundle(V2), shadowed(min_compared=500, max_disagreement_rate=0.2, abort_disagreement_rate=0.5)
        )
        manager.activate_deployment(candidate)
        rollout = manager.state.rollout
        assert rollout is not None
        assert rollout.phase == "shadow"
        assert rollout.share_bp == 0
        assert set(serve(manager, events)) == {stable}  # nobody is answered by the shadow
        status = manager.get_rollout_status()
        assert status is not None
        assert status.shadow is not None
        shown = status.to_dict()["shadow"]
        assert shown["compared"] == 600
        assert shown["disagreements"] == sum(expected.values())
        groups = {(g["agent"], g["flow"], g["from"], g["to"]): g["count"] for g in shown["groups"]}
        assert groups == dict(expected)
        assert shown["verdict"]["action"] == "proceed"
        clock.tick(1)
        report = manager.tick()
        assert any("left its shadow phase" in a for a in report.actions)
        rollout = manager.state.rollout
        assert rollout is not None
        assert rollout.phase is None
        assert rollout.share_bp == 1000
        assert shadow_of(manager) is None  # detached once the phase is over
        served = {manager.route(key, event).version_id for event, key in events}  # type: ignore[union-attr]
        assert served == {stable, candidate}
        last = manager.audit_log(candidate)[-1]
        assert last.actor == "controller"
        assert last.reason.startswith("shadow: disagreement")
        assert manager.get_rollout_status().to_dict()["phase"] == "traffic"  # type: ignore[union-attr]


def test_a_disagreeing_candidate_is_aborted_automatically_and_retry_shadows_it_again() -> None:
    """Over abort_disagreement_rate: ABORTED with the reason, one audit entry, a `rollout.aborted` event."""
    with freeze_time(T0):
        manager = DeploymentManager()
        stable = serving_v1(manager)
        candidate = manager.prepare_deployment(
            load_bundle(V2), shadowed(min_compared=500, max_disagreement_rate=0.01, abort_disagreement_rate=0.02)
        )
        manager.activate_deployment(candidate)
        events = traffic(600)
        why = f"shadow: disagreement {sum(disagreements(V2, events).values()) / 600:.2%} > 2.00%"
        serve(manager, events)
        with capture_logs() as logs:
            report = manager.tick()
        assert report.actions == (f"aborted {candidate}: {why}",)
        assert manager.state.rollout is None
        assert manager.get_active_version_id() == stable
        record = manager.state.versions[candidate]
        assert record.state is DeploymentState.ABORTED
        assert record.failure_reason == why
        entry = manager.audit_log(candidate)[-1]
        assert (entry.action, entry.actor, entry.to_state) == ("abort", "controller", "aborted")
        aborted = [e for e in logs if e["event"] == "rollout.aborted"]
        assert len(aborted) == 1
        assert aborted[0]["trigger"] == "shadow"
        assert aborted[0]["version_id"] == candidate
        manager.retry_rollout(candidate)  # the retried rollout starts with its shadow phase again
        rollout = manager.state.rollout
        assert rollout is not None
        assert rollout.phase == "shadow"
        assert rollout.share_bp == 0


def test_a_failing_candidate_is_aborted_on_its_error_rate() -> None:
    """gateway-v3-broken raises on recorded traffic: the shadow's error rate aborts it before any user sees it."""
    with freeze_time(T0):
        manager = DeploymentManager()
        serving_v1(manager)
        candidate = manager.prepare_deployment(load_bundle(V3), shadowed())
        manager.activate_deployment(candidate)
        serve(manager, traffic(300))
        manager.tick()
        assert manager.state.versions[candidate].state is DeploymentState.ABORTED
        assert (manager.state.versions[candidate].failure_reason or "").startswith("shadow: error rate")


def test_a_shadow_phase_holds_with_too_few_compared_and_says_why() -> None:
    """Fewer than min_compared: nothing moves however long it lasts; status and the tick say why."""
    with freeze_time(T0) as clock:
        manager = DeploymentManager()
        serving_v1(manager)
        candidate = manager.prepare_deployment(load_bundle(V2), shadowed(min_compared=5000))
        manager.activate_deployment(candidate)
        serve(manager, traffic(600))
        for _ in range(3):
            clock.tick(120)  # past the canary's stage duration: still no stage
            report = manager.tick()
            assert report.actions == ()
            assert f"{candidate}: shadow: 600 of 5000 events compared" in report.holding
        status = manager.get_rollout_status()
        assert status is not None
        assert status.holding == "shadow: 600 of 5000 events compared"
        assert status.percentage == 0
        assert status.next_step_at is None
        assert manager.state.rollout is not None
        assert manager.state.rollout.phase == "shadow"
        assert manager.advance_rollout() is False  # a person's advance does not skip the verdict either


def test_a_progress_deadline_bounds_a_holding_shadow_phase_and_a_person_may_still_promote() -> None:
    with freeze_time(T0) as clock:
        manager = DeploymentManager()
        serving_v1(manager)
        candidate = manager.prepare_deployment(load_bundle(V2), shadowed(min_compared=5000))
        manager.activate_deployment(candidate, progress_deadline=600, progress_deadline_abort=True)
        clock.tick(601)
        manager.tick()
        assert manager.state.versions[candidate].state is DeploymentState.ABORTED
        manager.retry_rollout(candidate)
        assert manager.promote() == candidate
        assert manager.get_active_version_id() == candidate
        assert shadow_of(manager) is None


def test_a_blue_green_shadow_switches_all_traffic_on_proceed() -> None:
    with freeze_time(T0):
        manager = DeploymentManager()
        serving_v1(manager)
        candidate = manager.prepare_deployment(load_bundle(V1), BlueGreen(shadow=ShadowOptions(1.0, min_compared=100)))
        manager.activate_deployment(candidate)
        assert manager.state.rollout is not None
        assert manager.state.rollout.kind == "blue-green"
        serve(manager, traffic(150))
        manager.tick()
        assert manager.get_active_version_id() == candidate
        assert manager.state.rollout is None


def test_the_first_deployment_has_no_shadow_phase() -> None:
    """Nothing serves yet, so nothing can be shadowed: the version is activated by its strategy."""
    manager = DeploymentManager()
    version = manager.prepare_deployment(load_bundle(V1), BlueGreen(shadow=ShadowOptions()))
    manager.activate_deployment(version)
    assert manager.get_active_version_id() == version
    assert manager.state.rollout is None


def one_shadows_the_other_decides(open_manager: Callable[[], DeploymentManager]) -> None:
    """Two managers on one store: the serving one flushes its shadow counts, the other's controller judges them."""
    first, second = traffic(300, seed=1), traffic(300, seed=2)
    expected = sum(disagreements(V2, first + second).values())
    with freeze_time(T0) as clock:
        controller, evaluator = open_manager(), open_manager()
        try:
            stable = serving_v1(controller)
            candidate = controller.prepare_deployment(
                load_bundle(V2), shadowed(min_compared=500, max_disagreement_rate=0.2, abort_disagreement_rate=0.5)
            )
            controller.activate_deployment(candidate)
            assert evaluator.refresh()
            assert shadow_of(evaluator) is not None
            assert set(serve(evaluator, first)) == {stable}
            evaluator.health_verdict(stable)  # a read that flushes this process's counts to the store
            clock.tick(1)
            report = controller.tick()
            assert report.actions == ()
            assert f"{candidate}: shadow: 300 of 500 events compared" in report.holding
            serve(evaluator, second)
            evaluator.health_verdict(stable)
            status = controller.get_rollout_status()
            assert status is not None
            assert status.shadow is not None
            assert status.shadow.report.compared == 600  # the other process's figures, from the store
            assert status.shadow.report.disagreements == expected
            clock.tick(1)
            assert any("left its shadow phase" in a for a in controller.tick().actions)
            assert evaluator.refresh()
            assert shadow_of(evaluator) is None
            assert evaluator.snapshot.share_bp == 1000  # the evaluator now serves the canary's first stage
        finally:
            evaluator.close()
            controller.close()


def test_one_evaluator_shadows_and_a_controller_in_another_manager_decides(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    one_shadows_the_other_decides(lambda: DeploymentManager.open(url, follow=False))


def test_one_evaluator_shadows_and_a_controller_in_another_manager_decides_on_postgres(pg_database: str) -> None:
    from rule_engine.stores.postgres import PostgresStore

    one_shadows_the_other_decides(lambda: DeploymentManager.open(PostgresStore(pg_database, timeout=5), follow=False))


def test_status_and_metrics_show_the_stored_shadow_phase(tmp_path: Path) -> None:
    """`deploy --shadow` starts the phase; `status` (text and JSON) shows it; /metrics counts the evaluator."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    runner = CliRunner()
    assert runner.invoke(cli, ["--store", url, "deploy", V1]).exit_code == 0
    deployed = runner.invoke(
        cli, ["--store", url, "deploy", V2, "--stages", "10,100", "--shadow", "0.5", "--min-compared", "50", "--json"]
    )
    assert deployed.exit_code == 0, deployed.output
    strategy = json.loads(deployed.stdout)["strategy"]
    assert strategy["shadow"]["sample_rate"] == 0.5
    assert strategy["shadow"]["min_compared"] == 50
    shown = json.loads(runner.invoke(cli, ["--store", url, "status", "--json"]).stdout)
    assert shown["rollout"]["phase"] == "shadow"
    assert shown["rollout"]["percentage"] == 0
    assert shown["rollout"]["shadow"]["verdict"] == {"action": "hold", "reason": "0 of 50 events compared"}
    text = runner.invoke(cli, ["--store", url, "status"]).stdout
    assert "shadow phase (50% sampled): 0 compared" in text
    assert "shadow phase, then stage 1/2, against" in text
    advanced = runner.invoke(cli, ["--store", url, "advance"])
    assert "not advanced: shadow: 0 of 50 events compared" in advanced.output
    assert "HOLD (0 of 50 events compared)" in text
    manager = DeploymentManager.open(url, follow=False)
    try:
        serve(manager, traffic(200))
        registry = CollectorRegistry()
        register(manager, registry=registry)
        metrics = generate_latest(registry).decode()
        shadow = shadow_of(manager)
        assert shadow is not None
        evaluations = shadow.report().evaluations
        assert 50 < evaluations < 150  # half of 200, sampled
        candidate = shadow.candidate.version_id
        line = f'rule_engine_shadow_evaluations_total{{deployment="default",version="{candidate}"}} {evaluations:.1f}'
        assert line in metrics.splitlines()
        manager.health_verdict(candidate)  # a flush: this process's counts join the fleet's in the store
        assert manager.get_rollout_status().shadow.report.evaluations == evaluations  # type: ignore[union-attr]
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--strategy", "ab-test", "--shadow", "0.1"], "--shadow applies to --strategy canary or blue-green"),
        (["--max-disagreement", "0.1"], "go with --shadow RATE"),
        (["--shadow", "0.1", "--max-disagreement", "0.3", "--abort-disagreement", "0.2"], "abort thresholds"),
        (["--shadow", "0"], "--shadow"),
    ],
)
def test_deploy_refuses_a_shadow_it_cannot_run(tmp_path: Path, args: list[str], fragment: str) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    result = CliRunner().invoke(cli, ["--store", url, "deploy", V1, *args])
    assert result.exit_code == 2
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_the_shadow_phase_is_stored_and_read_back() -> None:
    """Rollout and strategy round-trip with the phase; the stored forms without it are unchanged."""
    rollout = Rollout("blue-green", "b", "a", 0, 0, 1.0, 1.0, "b", phase="shadow")
    assert Rollout.from_dict(rollout.to_dict()) == rollout
    plain = Rollout("canary", "b", "a", 1000, 0, 1.0, 1.0, "b")
    assert "phase" not in plain.to_dict()
    assert Rollout.from_dict(plain.to_dict()) == plain
    with pytest.raises(ValueError, match="unknown rollout kind"):  # blue-green splits nothing outside the phase
        Rollout.from_dict({**rollout.to_dict(), "phase": None})
    with pytest.raises(ValueError, match="unknown rollout phase"):
        Rollout.from_dict({**rollout.to_dict(), "phase": "dark"})
    canary = shadowed(min_compared=7)
    assert strategy_from_dict(canary.to_dict()) == canary
    assert "shadow" not in Canary().to_dict()
    assert "shadow" not in BlueGreen().to_dict()


@pytest.mark.parametrize(
    "bad",
    [{"sample_rate": 0}, {"sample_rate": 1.5}, {"sample_rate": float("nan")}, {"sample_rate": True},
     {"min_compared": -1}, {"max_disagreement_rate": 0.5, "abort_disagreement_rate": 0.1}, {"max_error_rate": 2}],
)  # fmt: skip
def test_shadow_options_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidStrategyError, match="shadow"):
        ShadowOptions(**bad)
    with pytest.raises(InvalidStrategyError, match="unknown option"):
        Canary(shadow={"sample_rate": 0.1, "rate": 1})  # type: ignore[arg-type]


labels = st.text(max_size=6)
reports = st.builds(
    lambda groups, n: ShadowReport(
        "v", 0.1, n[0], n[1], n[2] + n[3] + n[4], n[3], n[4], sum(groups.values()), n[5], groups
    ),
    st.dictionaries(st.tuples(labels, labels, labels, labels), st.integers(1, 10**6), max_size=20),
    st.tuples(*[st.integers(0, 10**9)] * 6),
)


@given(reports)
def test_a_shadow_bucket_carries_a_report_exactly(report: ShadowReport) -> None:
    """What the ledger writes into the shadow bucket reads back as the same report (any labels)."""
    back = report_of_counts("v", 0.1, counts_of_report(report))
    assert back == report


def test_a_shadow_bucket_read_back_is_checked_and_bounded() -> None:
    """Undecodable group keys count as (other); more than MAX_GROUPS groups fold the smallest into (other)."""
    groups = {json.dumps([f"a{i}", "f", "x", "y"]): i + 1 for i in range(MAX_GROUPS + 10)}
    counts = HealthCounts(5, 9, decisions={**groups, "not json": 3, '["too", "short"]': 4}, rules={"sampled": -4})
    report = report_of_counts("v", 0.1, counts)
    assert len(report.groups) == MAX_GROUPS
    assert report.errors == 5
    assert report.sampled == 0
    smallest = sum(range(1, 12))  # the 11 smallest groups (1..11) fold, with the 7 undecodable
    assert report.groups[(OTHER, OTHER, OTHER, OTHER)] == smallest + 7


HOSTILE = ("\ud800 lone surrogate", "nul \x00 and \\u0000", "allow", "deny")  # labels come from live events


def adds_up_shadow_buckets(store: StateStore) -> None:
    part = ShadowReport("v", 0.1, 10, 1, 9, 1, 0, 3, 1, {("a", "f", "allow", "deny"): 2, HOSTILE: 1})
    store.add_health_many([(shadow_key("v"), 60.0, counts_of_report(part))] * 2)
    total = report_of_counts("v", 0.1, store.health([shadow_key("v")], since=0, until=120)[shadow_key("v")])
    assert (total.evaluations, total.disagreements) == (18, 6)
    assert total.groups == {("a", "f", "allow", "deny"): 4, HOSTILE: 2}
    assert store.health(["v"])["v"] == HealthCounts()  # the version's own health is untouched


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_every_store_adds_up_shadow_buckets_like_health_buckets(backend: str, tmp_path: Path) -> None:
    """No schema change: a shadow bucket is a health row keyed `<version>#shadow`, added across processes."""
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url, create=True)
    try:
        adds_up_shadow_buckets(store)
    finally:
        store.close()


def test_postgres_adds_up_shadow_buckets_like_health_buckets(pg_database: str) -> None:
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(pg_database, timeout=5)
    try:
        adds_up_shadow_buckets(store)
    finally:
        store.close()


def test_what_a_shadow_counted_before_its_phase_ended_still_reaches_the_store() -> None:
    """A person aborts the phase between two flushes: the stopped evaluator is drained once more."""
    with freeze_time(T0):
        manager = DeploymentManager()
        stable = serving_v1(manager)
        candidate = manager.prepare_deployment(load_bundle(V2), shadowed())
        manager.activate_deployment(candidate)
        serve(manager, traffic(120))
        manager.abort_rollout()
        assert shadow_of(manager) is None
        manager.health_verdict(stable)  # the next flush
        lifetime = manager.store.health([shadow_key(candidate)])[shadow_key(candidate)]
        assert report_of_counts(candidate, 1.0, lifetime).evaluations == 120


# --- the pure planners, for any canary ------------------------------------------------------------------


@given(canaries(), st.sampled_from(["proceed", "abort", "hold"]))
def test_any_canary_with_a_shadow_starts_at_zero_and_ends_its_phase_by_the_verdict(canary: Canary, action: str) -> None:
    """activate -> shadow phase at 0% (advance cannot move it); proceed -> its first stage (or active); abort -> ABORTED."""
    strategy = dataclasses.replace(canary, shadow=ShadowOptions())
    stable = version_record("a", 1, DeploymentState.ACTIVE)
    candidate = version_record("b", 2, strategy=strategy)
    state = control_state(stable, candidate, active="a")
    state = activate(state, "b", 1000.0, "alice").state
    rollout = state.rollout
    assert rollout is not None
    assert (rollout.phase, rollout.share_bp, state.versions["b"].state) == ("shadow", 0, DeploymentState.ROLLING_OUT)
    assert advance(state, 10**9, "controller", healthy=True).result is False
    change = end_shadow(state, 2000.0, "controller", candidate="b", action=action, reason="r")
    if action == "hold":
        assert change is None
        return
    assert change is not None
    assert end_shadow(change.state, 2001.0, "controller", candidate="b", action=action, reason="r") is None  # once
    after = change.state
    if action == "abort":
        assert (after.rollout, after.versions["b"].state, after.active) == (None, DeploymentState.ABORTED, "a")
    elif len(canary.stages) == 1:
        assert (after.rollout, after.active) == (None, "b")
    else:
        assert after.rollout is not None
        assert (after.rollout.phase, after.rollout.share_bp) == (None, canary.first_share_bp())
        assert after.rollout.stage_started_at == 2000.0


def test_a_shadow_phase_is_told_as_a_rollout_that_started_and_holds_for_its_verdict() -> None:
    """Webhooks: the activation into the phase is `rollout.started` (no candidate serves yet), its hold's cause `shadow`."""
    from rule_engine.deployment.hooks import DeploymentEvent, HookPoint
    from rule_engine.observability.webhooks import event_name

    with freeze_time(T0) as clock:
        manager = DeploymentManager()
        serving_v1(manager)
        told: list[DeploymentEvent] = []
        manager.subscribe(HookPoint.AFTER_SWAP, told.append)
        holds: list[DeploymentEvent] = []
        manager.subscribe(HookPoint.ON_HOLD, holds.append)
        candidate = manager.prepare_deployment(load_bundle(V2), shadowed(min_compared=5000))
        manager.activate_deployment(candidate)
        activated = [e for e in told if e.action == "activate"]
        assert [event_name(e) for e in activated] == ["rollout.started"]
        serve(manager, traffic(50))
        for _ in range(3):
            clock.tick(120)
            manager.tick()
        assert [(e.action, e.cause) for e in holds] == [("held", "shadow")]  # once, not once per tick


def test_closing_the_manager_stops_the_shadow_phase_worker() -> None:
    with freeze_time(T0):
        manager = DeploymentManager()
        serving_v1(manager)
        manager.activate_deployment(manager.prepare_deployment(load_bundle(V2), shadowed()))
        shadow = shadow_of(manager)
        assert shadow is not None
        assert shadow.running
        manager.close()
        assert not shadow.running
