"""Hooks (before/after swap, on error, on rollback) and the bounded version history."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from structlog.testing import capture_logs

from rule_engine import (
    BlueGreen,
    Canary,
    DeploymentEvent,
    DeploymentManager,
    DeploymentState,
    HealthThresholds,
    HookPoint,
    RolloutInProgressError,
    Scheduled,
    VersionNotFoundError,
)
from tests._support_deployment import START, mini_bundle


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    """Frozen time."""
    with freeze_time(START) as frozen:
        yield frozen


def _recording(manager: DeploymentManager) -> dict[HookPoint, list[DeploymentEvent]]:
    seen: dict[HookPoint, list[DeploymentEvent]] = {point: [] for point in HookPoint}
    for point in HookPoint:
        manager.subscribe(point, seen[point].append)
    return seen


# --- hooks ------------------------------------------------------------------------------------------


def test_swap_hooks_see_what_served_before_and_after(clock: FrozenDateTimeFactory) -> None:
    """before_swap runs while the old version still serves, after_swap once the new one does."""
    manager = DeploymentManager()
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "alice")
    serving_in_before: list[str | None] = []
    manager.subscribe(HookPoint.BEFORE_SWAP, lambda e: serving_in_before.append(manager.get_active_version_id()))
    seen = _recording(manager)
    manager.activate_deployment(v1, actor="alice")
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), BlueGreen(), "bob")
    manager.activate_deployment(v2, actor="bob")
    assert serving_in_before == [None, v1]
    before, after = seen[HookPoint.BEFORE_SWAP][-1], seen[HookPoint.AFTER_SWAP][-1]
    assert (before.action, before.version_id, before.actor) == ("activate", v2, "bob")
    assert before.serving_before == (v1, None, 0.0)
    assert before.serving_after == (v2, None, 0.0)
    assert after.serving_before == (v1, None, 0.0)
    assert after.serving_after == (v2, None, 0.0)
    assert len(seen[HookPoint.AFTER_SWAP]) == 2  # prepare is not a swap
    assert seen[HookPoint.ON_ERROR] == seen[HookPoint.ON_ROLLBACK] == []


def test_canary_hooks_carry_the_candidate_share(clock: FrozenDateTimeFactory) -> None:
    """A canary's swap events name the candidate and its percentage at each stage."""
    manager = DeploymentManager()
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "alice")
    manager.activate_deployment(v1)
    seen = _recording(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 50, 100], 60), "alice")
    manager.activate_deployment(v2)
    clock.tick(60)
    manager.advance_rollout()
    assert [e.serving_after for e in seen[HookPoint.AFTER_SWAP]] == [(v1, v2, 10.0), (v1, v2, 50.0)]
    assert [e.action for e in seen[HookPoint.AFTER_SWAP]] == ["activate", "advance"]


def test_on_rollback_and_on_error(clock: FrozenDateTimeFactory) -> None:
    """on_rollback gets the rolled-back version and reason; on_error gets the failed operation's error."""
    manager = DeploymentManager()
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "alice")
    manager.activate_deployment(v1)
    seen = _recording(manager)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary(), "alice")
    manager.activate_deployment(v2)
    manager.rollback(actor="oncall", reason="latency")
    (rolled,) = seen[HookPoint.ON_ROLLBACK]
    assert (rolled.action, rolled.version_id, rolled.actor, rolled.reason) == ("rollback", v2, "oncall", "latency")
    assert (rolled.serving_before, rolled.serving_after) == ((v1, v2, 10.0), (v1, None, 0.0))
    assert rolled.automatic is False
    with pytest.raises(VersionNotFoundError):
        manager.activate_deployment("ghost", actor="bob")
    (failed,) = seen[HookPoint.ON_ERROR]
    assert (failed.action, failed.version_id, failed.actor) == ("activate", "ghost", "bob")
    assert isinstance(failed.error, VersionNotFoundError)
    assert "Version not found" in failed.reason
    assert failed.serving_before == failed.serving_after == (v1, None, 0.0)


def test_on_error_for_a_refused_second_rollout(clock: FrozenDateTimeFactory) -> None:
    """A refused operation reaches on_error with its typed error and changes nothing."""
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("1.0.0")))
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0"), Canary()))
    seen = _recording(manager)
    third = manager.prepare_deployment(mini_bundle("3.0.0"), Canary())
    with pytest.raises(RolloutInProgressError):
        manager.activate_deployment(third)
    assert [type(e.error) for e in seen[HookPoint.ON_ERROR]] == [RolloutInProgressError]
    assert seen[HookPoint.BEFORE_SWAP] == seen[HookPoint.AFTER_SWAP] == []


@pytest.mark.parametrize("point", list(HookPoint))
def test_a_raising_hook_is_logged_and_never_breaks_the_operation(
    point: HookPoint, clock: FrozenDateTimeFactory
) -> None:
    """A hook that raises is logged as hook.failed; the swap (or rollback) still happens; later hooks still run."""
    manager = DeploymentManager()
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(v1)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary())

    def broken(event: DeploymentEvent) -> None:
        raise RuntimeError("hook is broken")

    later: list[str] = []
    manager.subscribe(point, broken)
    manager.subscribe(point, lambda e: later.append(e.action))
    with capture_logs() as logs:
        manager.activate_deployment(v2)
        manager.tick()  # on_hold: the new canary has no verdict yet
        assert manager.rollback() == v1
        with pytest.raises(VersionNotFoundError):
            manager.activate_deployment("ghost")
    assert manager.get_deployment_info(v2).state is DeploymentState.ROLLED_BACK  # type: ignore[union-attr]
    assert manager.get_active_version_id() == v1
    failures = [e for e in logs if e["event"] == "hook.failed"]
    assert failures
    assert all(e["hook_point"] == point.value and "hook is broken" in e["error"] for e in failures)
    assert len(later) == len(failures)


def test_unsubscribe_stops_a_hook(clock: FrozenDateTimeFactory) -> None:
    """The function subscribe returns removes the hook."""
    manager = DeploymentManager()
    calls: list[DeploymentEvent] = []
    unsubscribe = manager.subscribe("after_swap", calls.append)
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("1.0.0")))
    unsubscribe()
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0")))
    assert len(calls) == 1


# --- history ----------------------------------------------------------------------------------------


def test_history_is_bounded_and_keeps_active_and_rollback_target(clock: FrozenDateTimeFactory) -> None:
    """With max_history=3 the oldest versions go; the active one and the rollback target stay."""
    manager = DeploymentManager(max_history=3)
    ids = []
    for n in range(1, 8):
        version_id = manager.prepare_deployment(mini_bundle(f"{n}.0.0"))
        manager.activate_deployment(version_id)
        ids.append(version_id)
        history = manager.get_deployment_history()
        assert len(history) <= 3
        assert version_id in history
        if n > 1:
            assert ids[-2] in history
    assert manager.get_deployment_history() == ids[-3:]
    assert manager.get_deployment_info(ids[0]) is None
    assert manager.rollback() == ids[-2]
    evictions = [e for e in manager.audit_log() if e.action == "evict"]
    assert [e.version_id for e in evictions] == ids[:4]


def test_history_never_evicts_a_rollout_in_progress(clock: FrozenDateTimeFactory) -> None:
    """Many staged versions do not push out the canary's candidate, its stable version or a pending schedule."""
    manager = DeploymentManager(max_history=2)
    stable = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(stable)
    scheduled = manager.prepare_deployment(mini_bundle("1.5.0"), Scheduled(datetime.now(UTC) + timedelta(days=1)))
    candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary())
    manager.activate_deployment(candidate)
    for n in range(3, 10):
        manager.prepare_deployment(mini_bundle(f"{n}.0.0"))
    history = manager.get_deployment_history()
    assert {stable, candidate, scheduled} <= set(history)
    assert len(history) <= 4  # the protected three plus the newest staged one
    assert manager.rollback() == stable


def test_evicted_tables_are_freed(clock: FrozenDateTimeFactory) -> None:
    """Once a version leaves the history, nothing keeps its compiled table alive."""
    manager = DeploymentManager(max_history=2)
    first = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(first)
    table = manager.get_active_table()
    assert table is not None
    ref = weakref.ref(table)
    del table
    for n in range(2, 6):
        manager.activate_deployment(manager.prepare_deployment(mini_bundle(f"{n}.0.0")))
    assert first not in manager.get_deployment_history()
    gc.collect()
    assert ref() is None


def test_retained_tables_stay_alive(clock: FrozenDateTimeFactory) -> None:
    """The rollback target's table is kept (rollback needs no recompilation)."""
    manager = DeploymentManager(max_history=2)
    first = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(first)
    ref = weakref.ref(manager.get_active_table())  # type: ignore[arg-type]
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0")))
    gc.collect()
    assert ref() is not None
    manager.rollback()
    assert manager.get_active_table() is ref()


def test_on_rollback_marks_automatic_rollbacks(clock: FrozenDateTimeFactory) -> None:
    """An automatic rollback reaches on_rollback with automatic=True and the controller as actor."""
    manager = DeploymentManager(auto_rollback=True, thresholds=HealthThresholds(min_evaluations=10))
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(v1)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"), Canary())
    manager.activate_deployment(v2)
    seen = _recording(manager)
    assert manager.update_health_metrics(v2, evaluations=100, errors=50) is False
    (rolled,) = seen[HookPoint.ON_ROLLBACK]
    assert (rolled.version_id, rolled.actor, rolled.automatic) == (v2, "controller", True)
    assert "error rate" in rolled.reason
    assert manager.get_active_version_id() == v1
