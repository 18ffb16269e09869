"""DeploymentManager: prepare, the four strategies, rollback, errors, info, audit and log events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from structlog.testing import capture_logs

from rule_engine import (
    ABTest,
    ActivationTimeNotReachedError,
    BlueGreen,
    BundleTestFailure,
    BundleValidationError,
    Canary,
    DeploymentManager,
    DeploymentState,
    InvalidStrategyError,
    InvalidTransitionError,
    NoPreviousVersionError,
    RolloutInProgressError,
    RuleEngine,
    Scheduled,
    VersionNotFoundError,
)
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2, START, mini_bundle

S = DeploymentState
EVENTS = [
    json.loads(line)
    for line in (Path(__file__).parent / "cases" / "events" / "gateway.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """Frozen time; tests move it with ``clock.tick(seconds)``."""
    with freeze_time(START) as frozen:
        yield frozen


@pytest.fixture
def manager(clock: FrozenDateTimeFactory) -> DeploymentManager:
    """An empty in-memory manager under frozen time."""
    return DeploymentManager()


def _active(manager: DeploymentManager, bundle: Any = None, strategy: Any = None) -> str:
    version_id = manager.prepare_deployment(bundle or mini_bundle("1.0.0"), strategy or BlueGreen(), "alice")
    manager.activate_deployment(version_id)
    return version_id


def _state(manager: DeploymentManager, version_id: str) -> DeploymentState:
    info = manager.get_deployment_info(version_id)
    assert info is not None
    return info.state


def _decisions(manager: DeploymentManager) -> list[tuple[str, str | None]]:
    engine = RuleEngine(manager)
    return [(d.decision, d.rule_id) for d in (engine.evaluate(case["event"]) for case in EVENTS)]


def _expected(label: str) -> list[tuple[str, str | None]]:
    return [(case[label]["decision"], case[label]["rule_id"]) for case in EVENTS]


# --- prepare ----------------------------------------------------------------------------------------


def test_prepare_stages_and_serves_nothing_new(manager: DeploymentManager) -> None:
    """A prepared version is STAGED; what serves is unchanged."""
    stable = _active(manager, GATEWAY_V1)
    snapshot = manager.snapshot
    staged = manager.prepare_deployment(GATEWAY_V2, BlueGreen(), "bob")
    assert _state(manager, staged) is S.STAGED
    assert (manager.snapshot.stable, manager.snapshot.candidate) == (snapshot.stable, None)
    assert manager.get_active_version_id() == stable
    assert _decisions(manager) == _expected("v1")


def test_version_ids_are_readable_and_unique_per_call(manager: DeploymentManager) -> None:
    """A version id names the bundle id, version and short digest; the same bundle twice gets two ids."""
    first = manager.prepare_deployment(GATEWAY_V1, BlueGreen(), "alice")
    second = manager.prepare_deployment(GATEWAY_V1, BlueGreen(), "alice")
    info = manager.get_deployment_info(first)
    assert info is not None
    assert first != second
    assert first.startswith(f"gateway-access@{info.bundle_version}+{info.digest[:8]}")
    assert info.bundle_id == "gateway-access"
    assert info.bundle_version == "1.0.0"
    assert manager.get_deployment_history() == [first, second]


@pytest.mark.parametrize(
    ("bundle", "error"),
    [
        ({"bundle_id": "broken"}, BundleValidationError),
        (mini_bundle("9.9.9", expect="allow"), BundleTestFailure),
        ("{not json", BundleValidationError),
    ],
)
def test_failed_prepare_leaves_no_trace(manager: DeploymentManager, bundle: Any, error: type[Exception]) -> None:
    """An invalid bundle or one whose tests fail raises and changes no history, audit or store revision."""
    stable = _active(manager)
    history, audit, revision = manager.get_deployment_history(), manager.audit_log(), manager.store.revision()
    with pytest.raises(error):
        manager.prepare_deployment(bundle, BlueGreen(), "mallory")
    assert manager.get_deployment_history() == history
    assert manager.audit_log() == audit
    assert manager.store.revision() == revision
    assert manager.get_active_version_id() == stable


@pytest.mark.parametrize("caught_as", [BundleTestFailure, BundleValidationError, ValueError])
def test_failing_bundle_tests_refuse_prepare_naming_the_test(
    manager: DeploymentManager, caught_as: type[Exception]
) -> None:
    """A bundle whose own test fails is refused (catchable as a validation error or ValueError), the message
    names the failing test and what it got, and nothing is prepared, audited, stored or served."""
    stable = _active(manager)
    history, audit, revision = manager.get_deployment_history(), manager.audit_log(), manager.store.revision()
    snapshot = manager.snapshot
    with pytest.raises(caught_as, match="test 'x-denied' failed: expected 'allow', got 'deny'") as refused:
        manager.prepare_deployment(mini_bundle("9.9.9", expect="allow"), BlueGreen(), "mallory")
    assert isinstance(refused.value, BundleTestFailure)
    assert manager.get_deployment_history() == history
    assert manager.audit_log() == audit
    assert manager.store.revision() == revision
    assert manager.snapshot is snapshot
    assert manager.get_active_version_id() == stable
    assert RuleEngine(manager).evaluate({"x": 1}).version_id == stable


# --- blue-green -------------------------------------------------------------------------------------


def test_blue_green_swaps_all_traffic_at_once(manager: DeploymentManager) -> None:
    """After the swap every request is decided by the new version; the old one is SUPERSEDED."""
    v1 = _active(manager, GATEWAY_V1)
    assert _decisions(manager) == _expected("v1")
    v2 = _active(manager, GATEWAY_V2)
    assert _decisions(manager) == _expected("v2")
    assert _expected("v1") != _expected("v2")
    assert {manager.route_and_get_table(h).version_id for h in range(0, 2**32, 2**24)} == {v2}  # type: ignore[union-attr]
    assert (_state(manager, v1), _state(manager, v2)) == (S.SUPERSEDED, S.ACTIVE)
    assert {d.version_id for d in (RuleEngine(manager).evaluate(c["event"]) for c in EVENTS)} == {v2}


def test_served_tables_carry_their_version_id(manager: DeploymentManager, clock: FrozenDateTimeFactory) -> None:
    """Stable and candidate tables (and their decisions) name the version that serves."""
    v1 = _active(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([50, 100], 10), "alice")
    manager.activate_deployment(v2)
    assert manager.get_active_table().version_id == v1  # type: ignore[union-attr]
    assert manager.snapshot.candidate.version_id == v2  # type: ignore[union-attr]
    served = {manager.route(f"k{i}").version_id for i in range(200)}  # type: ignore[union-attr]
    assert served == {v1, v2}
    assert {manager.route(f"k{i}").evaluate({"x": 1}).version_id for i in range(200)} == {v1, v2}  # type: ignore[union-attr]


# --- canary -----------------------------------------------------------------------------------------


def test_canary_advances_only_when_each_stage_has_lasted(
    manager: DeploymentManager, clock: FrozenDateTimeFactory
) -> None:
    """advance_rollout() is False before stage_duration, True after; reaching 100 makes it ACTIVE."""
    v1 = _active(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 25, 50, 100], 300), "alice")
    manager.activate_deployment(v2)
    assert _state(manager, v2) is S.ROLLING_OUT
    for percent in (10, 25, 50):
        info = manager.get_deployment_info(v2)
        assert info is not None
        assert info.current_percentage == percent
        assert manager.get_deployment_info(v1).current_percentage == 100 - percent  # type: ignore[union-attr]
        clock.tick(299)
        assert manager.advance_rollout() is False
        clock.tick(1)
        assert manager.advance_rollout() is True
    assert (_state(manager, v1), _state(manager, v2)) == (S.SUPERSEDED, S.ACTIVE)
    assert manager.get_active_version_id() == v2
    assert manager.snapshot.candidate is None
    assert manager.get_deployment_info(v2).current_percentage == 100  # type: ignore[union-attr]
    assert manager.get_deployment_info(v1).current_percentage == 0  # type: ignore[union-attr]
    assert manager.get_deployment_history() == [v1, v2]


def test_promote_finishes_a_canary_now(manager: DeploymentManager) -> None:
    """promote() gives the candidate all traffic at once and returns it."""
    v1 = _active(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary(), "alice")
    manager.activate_deployment(v2)
    assert manager.promote(actor="carol") == v2
    assert (_state(manager, v1), _state(manager, v2)) == (S.SUPERSEDED, S.ACTIVE)
    assert manager.audit_log(v2)[-1].actor == "carol"


def test_promote_and_advance_need_a_canary(manager: DeploymentManager) -> None:
    """advance/promote with no rollout, or during an A/B test, raise InvalidTransitionError."""
    _active(manager)
    with pytest.raises(InvalidTransitionError, match="no rollout is in progress"):
        manager.advance_rollout()
    with pytest.raises(InvalidTransitionError, match="no rollout is in progress"):
        manager.promote()
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0"), ABTest(), "alice"))
    with pytest.raises(InvalidTransitionError, match="conclude_experiment"):
        manager.advance_rollout()
    with pytest.raises(InvalidTransitionError, match="conclude_experiment"):
        manager.promote()


def test_canary_with_no_stable_version_activates_at_once(manager: DeploymentManager) -> None:
    """A first deployment with a canary or A/B strategy takes all traffic (nothing to compare with)."""
    first = manager.prepare_deployment(mini_bundle("1.0.0"), Canary([10, 100], 300), "alice")
    manager.activate_deployment(first)
    assert _state(manager, first) is S.ACTIVE
    assert manager.snapshot.candidate is None
    other = DeploymentManager()
    ab = other.prepare_deployment(mini_bundle("1.0.0"), ABTest(0.5), "alice")
    other.activate_deployment(ab)
    assert _state(other, ab) is S.ACTIVE
    assert "no stable version" in manager.audit_log(first)[-1].reason


# --- A/B --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("winner_is_b", [True, False])
def test_conclude_experiment_with_either_winner(manager: DeploymentManager, winner_is_b: bool) -> None:
    """The winner serves all traffic; a losing B is ROLLED_BACK, a losing A is SUPERSEDED."""
    a = _active(manager)
    b = manager.prepare_deployment(mini_bundle("2.0.0"), ABTest(split_ratio=0.5), "alice")
    manager.activate_deployment(b)
    assert _state(manager, b) is S.ROLLING_OUT
    winner = b if winner_is_b else a
    assert manager.conclude_experiment(winner) == winner
    assert manager.get_active_version_id() == winner
    assert manager.snapshot.candidate is None
    if winner_is_b:
        assert (_state(manager, a), _state(manager, b)) == (S.SUPERSEDED, S.ACTIVE)
    else:
        assert (_state(manager, a), _state(manager, b)) == (S.ACTIVE, S.ROLLED_BACK)


def test_conclude_experiment_refuses_unknown_or_outside_winners(manager: DeploymentManager) -> None:
    """An unknown winner says Version not found; a known version outside the test is refused; nothing changes."""
    _active(manager)
    outsider = manager.prepare_deployment(mini_bundle("3.0.0"), BlueGreen(), "alice")
    b = manager.prepare_deployment(mini_bundle("2.0.0"), ABTest(), "alice")
    manager.activate_deployment(b)
    revision = manager.store.revision()
    with pytest.raises(VersionNotFoundError, match="Version not found"):
        manager.conclude_experiment("nope@1+00000000.99")
    with pytest.raises(InvalidTransitionError, match="not in the A/B test"):
        manager.conclude_experiment(outsider)
    assert manager.store.revision() == revision
    with pytest.raises(InvalidTransitionError, match="no rollout"):
        DeploymentManager().conclude_experiment(b)


# --- scheduled --------------------------------------------------------------------------------------


def test_scheduled_refuses_before_its_time_and_tick_activates_it(
    manager: DeploymentManager, clock: FrozenDateTimeFactory
) -> None:
    """Activation before the time says Activation time not reached; tick() activates it once due."""
    v1 = _active(manager)
    due = datetime.now(UTC) + timedelta(hours=1)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Scheduled(due), "alice")
    with pytest.raises(ActivationTimeNotReachedError, match="Activation time not reached"):
        manager.activate_deployment(v2)
    assert manager.tick().actions == ()
    assert manager.get_active_version_id() == v1
    clock.tick(3600)
    report = manager.tick()
    assert report.actions == (f"activated scheduled {v2}",)
    assert manager.get_active_version_id() == v2
    assert manager.audit_log(v2)[-1].actor == "controller"


def test_scheduled_accepts_unix_seconds_and_aware_datetimes_in_any_zone() -> None:
    """Scheduled takes unix seconds or an aware datetime; the two forms of one instant are equal."""
    instant = datetime(2026, 1, 5, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert Scheduled(instant) == Scheduled(instant.timestamp())
    assert Scheduled(instant).activation_time == datetime(2026, 1, 5, 12, 0, tzinfo=UTC).timestamp()


def test_scheduled_can_be_activated_by_hand_once_due(manager: DeploymentManager, clock: FrozenDateTimeFactory) -> None:
    """A due scheduled version may be activated explicitly."""
    _active(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Scheduled(datetime.now(UTC) + timedelta(minutes=5)), "a")
    clock.tick(300)
    manager.activate_deployment(v2)
    assert manager.get_active_version_id() == v2


def test_scheduled_waits_while_a_rollout_is_in_progress(
    manager: DeploymentManager, clock: FrozenDateTimeFactory
) -> None:
    """tick() holds a due scheduled version while a canary runs, and activates it afterwards."""
    _active(manager)
    canary = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 100], 10_000), "alice")
    scheduled = manager.prepare_deployment(mini_bundle("3.0.0"), Scheduled(datetime.now(UTC) + timedelta(seconds=60)))
    manager.activate_deployment(canary)
    clock.tick(61)
    report = manager.tick()
    assert any(scheduled in h and "waiting for the rollout" in h for h in report.holding)
    assert _state(manager, scheduled) is S.STAGED
    manager.rollback()
    manager.tick()
    assert manager.get_active_version_id() == scheduled


# --- rollback ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [Canary([10, 50, 100], 60), ABTest(0.5)])
def test_rollback_during_a_rollout_returns_traffic_to_stable(manager: DeploymentManager, strategy: Any) -> None:
    """The candidate is ROLLED_BACK and the stable version serves every request."""
    v1 = _active(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), strategy, "alice")
    manager.activate_deployment(v2)
    assert manager.rollback(actor="oncall", reason="errors up") == v1
    assert (_state(manager, v1), _state(manager, v2)) == (S.ACTIVE, S.ROLLED_BACK)
    assert manager.get_deployment_info(v2).failure_reason == "errors up"  # type: ignore[union-attr]
    assert {manager.route(f"k{i}").version_id for i in range(500)} == {v1}  # type: ignore[union-attr]


def test_rollback_of_the_active_version_walks_back_the_history(manager: DeploymentManager) -> None:
    """Each rollback restores the previously active version, until there is none."""
    v1 = _active(manager)
    v2 = _active(manager, mini_bundle("2.0.0"))
    v3 = _active(manager, mini_bundle("3.0.0"))
    assert manager.rollback() == v2
    assert (_state(manager, v2), _state(manager, v3)) == (S.ACTIVE, S.ROLLED_BACK)
    assert manager.rollback() == v1
    assert manager.get_active_table().version_id == v1  # type: ignore[union-attr]
    with pytest.raises(NoPreviousVersionError, match="No previous version to rollback to"):
        manager.rollback()
    assert manager.get_active_version_id() == v1


def test_rollback_with_nothing_active(manager: DeploymentManager) -> None:
    """Rollback before any activation, or with a single version, says No previous version to rollback to."""
    with pytest.raises(NoPreviousVersionError, match="No previous version to rollback to"):
        manager.rollback()
    _active(manager)
    with pytest.raises(NoPreviousVersionError, match="No previous version to rollback to"):
        manager.rollback()


# --- invalid operations -----------------------------------------------------------------------------


def test_unknown_versions(manager: DeploymentManager) -> None:
    """Activating an unknown version says Version not found; its info is None."""
    with pytest.raises(VersionNotFoundError, match="Version not found"):
        manager.activate_deployment("ghost@1.0.0+00000000.1")
    assert manager.get_deployment_info("ghost@1.0.0+00000000.1") is None
    assert issubclass(VersionNotFoundError, LookupError)


def test_activating_twice_is_refused(manager: DeploymentManager) -> None:
    """Activating an active or rolling-out version again raises InvalidTransitionError; nothing changes."""
    v1 = _active(manager)
    revision = manager.store.revision()
    with pytest.raises(InvalidTransitionError, match="already active"):
        manager.activate_deployment(v1)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary(), "alice")
    manager.activate_deployment(v2)
    with pytest.raises(InvalidTransitionError, match="already rolling_out"):
        manager.activate_deployment(v2)
    manager.rollback()
    with pytest.raises(InvalidTransitionError, match="rolled_back"):
        manager.activate_deployment(v2)
    assert manager.store.revision() > revision


def test_a_second_rollout_is_refused_unless_it_supersedes(manager: DeploymentManager) -> None:
    """A second rollout raises RolloutInProgressError; supersede=True aborts the first and starts the second."""
    v1 = _active(manager)
    first = manager.prepare_deployment(mini_bundle("2.0.0"), Canary(), "alice")
    second = manager.prepare_deployment(mini_bundle("3.0.0"), Canary(), "bob")
    blue = manager.prepare_deployment(mini_bundle("4.0.0"), BlueGreen(), "bob")
    manager.activate_deployment(first)
    for version in (second, blue):
        with pytest.raises(RolloutInProgressError, match="supersede=True"):
            manager.activate_deployment(version)
    assert manager.snapshot.candidate.version_id == first  # type: ignore[union-attr]
    manager.activate_deployment(second, supersede=True)
    assert _state(manager, first) is S.ROLLED_BACK
    assert "superseded by" in (manager.get_deployment_info(first).failure_reason or "")  # type: ignore[union-attr]
    assert _state(manager, second) is S.ROLLING_OUT
    assert manager.snapshot.candidate.version_id == second  # type: ignore[union-attr]
    assert manager.get_active_version_id() == v1


@pytest.mark.parametrize(
    "build",
    [
        lambda: Canary([10, 10, 100]),
        lambda: Canary([50, 25, 100]),
        lambda: Canary([10, 50]),
        lambda: Canary([]),
        lambda: Canary([0, 100]),
        lambda: Canary([10, 100], -1),
        lambda: ABTest(split_ratio=0),
        lambda: ABTest(split_ratio=1),
        lambda: ABTest(split_ratio=1.5),
        lambda: ABTest(split_ratio=0.5, test_duration_secs=0),
        lambda: Scheduled(datetime(2026, 1, 5, 12, 0)),  # naive
        lambda: Scheduled(-5),
    ],
)
def test_invalid_strategies_are_refused(build: Any) -> None:
    """Strategies validate their parameters and raise InvalidStrategyError (a ValueError)."""
    with pytest.raises(InvalidStrategyError):
        build()


# --- info, audit, logs ------------------------------------------------------------------------------


def test_deployment_info_fields(manager: DeploymentManager, clock: FrozenDateTimeFactory) -> None:
    """DeploymentInfo reports who, what, which strategy, state, share and timestamps."""
    _active(manager)
    created = datetime.now(UTC).timestamp()
    v2 = manager.prepare_deployment(GATEWAY_V2, Canary([20, 100], 60), "dora", replace_policy=True)
    clock.tick(5)
    manager.activate_deployment(v2)
    info = manager.get_deployment_info(v2)
    assert info is not None
    assert (info.version_id, info.bundle_id, info.bundle_version, info.deployed_by) == (
        v2,
        "gateway-access",
        "2.0.0",
        "dora",
    )
    assert len(info.digest) == 64
    assert info.strategy == Canary([20, 100], 60)
    assert (info.state, info.current_percentage, info.failure_reason) == (S.ROLLING_OUT, 20.0, None)
    assert (info.created_at, info.activated_at, info.finished_at) == (created, created + 5, None)
    assert info.health_metrics.total_evaluations == 0
    assert info.to_dict()["state"] == "rolling_out"


def test_every_transition_is_audited(manager: DeploymentManager, clock: FrozenDateTimeFactory) -> None:
    """The audit trail holds every transition with actor, from/to state and reason, in order."""
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "alice")
    manager.activate_deployment(v1, actor="alice")
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([50, 100], 10), "bob")
    manager.activate_deployment(v2, actor="bob")
    clock.tick(10)
    manager.advance_rollout(actor="bob")
    manager.rollback(actor="oncall", reason="bad decisions")
    rows = [(e.action, e.version_id, e.from_state, e.to_state, e.actor) for e in manager.audit_log()]
    assert rows == [
        ("prepare", v1, "preparing", "staged", "alice"),
        ("activate", v1, "staged", "active", "alice"),
        ("prepare", v2, "preparing", "staged", "bob"),
        ("activate", v2, "staged", "rolling_out", "bob"),
        ("advance", v2, "rolling_out", "active", "bob"),
        ("advance", v1, "active", "superseded", "bob"),
        ("rollback", v2, "active", "rolling_back", "oncall"),
        ("rollback", v2, "rolling_back", "rolled_back", "oncall"),
        ("rollback", v1, "superseded", "active", "oncall"),
    ]
    assert all(e.reason for e in manager.audit_log())
    assert manager.audit_log()[-2].reason == "bad decisions"
    assert [e.seq for e in manager.audit_log()] == sorted(e.seq for e in manager.audit_log())  # type: ignore[type-var]
    assert [e.to_state for e in manager.audit_log(v1)] == ["staged", "active", "superseded", "active"]


def test_every_state_change_is_a_log_event(manager: DeploymentManager, clock: FrozenDateTimeFactory) -> None:
    """prepare, activate, rollout start/advance/completion, rollback and conclusion each log a named event."""
    with capture_logs() as logs:
        v1 = _active(manager)
        v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 50, 100], 10), "alice")
        manager.activate_deployment(v2)
        clock.tick(10)
        manager.advance_rollout()
        manager.rollback()
        v3 = manager.prepare_deployment(mini_bundle("3.0.0"), ABTest(), "alice")
        manager.activate_deployment(v3)
        manager.conclude_experiment(v3)
    events = [(e["event"], e.get("version_id")) for e in logs]
    assert events == [
        ("deployment.prepared", v1),
        ("deployment.activated", v1),
        ("deployment.prepared", v2),
        ("rollout.started", v2),
        ("rollout.advanced", v2),
        ("rollback.completed", v2),
        ("deployment.prepared", v3),
        ("rollout.started", v3),
        ("deployment.activated", v3),
        ("experiment.concluded", v3),
    ]
    advanced = next(e for e in logs if e["event"] == "rollout.advanced")
    assert (advanced["from_percentage"], advanced["percentage"]) == (10.0, 50.0)
    rolled_back = next(e for e in logs if e["event"] == "rollback.completed")
    assert (rolled_back["serving_version_id"], rolled_back["trigger"]) == (v1, "manual")
