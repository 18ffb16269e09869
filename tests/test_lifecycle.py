"""The operator's lifecycle from Python: pause/resume, abort/retry, undo, activate early, cancel, schedules that
never override a newer deploy (D16), the pending-schedule bound (D22), the progress deadline, and the audit's
origin. Time is a ManualClock; nothing sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rule_engine import (
    BlueGreen,
    Canary,
    DeploymentError,
    DeploymentManager,
    DeploymentState,
    InvalidTransitionError,
    RolloutInProgressError,
    Scheduled,
)
from rule_engine.control.transitions import MAX_PENDING_SCHEDULED
from rule_engine.testing import ManualClock
from tests._support_deployment import mini_bundle

S = DeploymentState
KEYS = [f"user-{i}" for i in range(10_000)]


def _manager(clock: ManualClock, **kwargs: object) -> DeploymentManager:
    return DeploymentManager(clock=clock, max_history=100, **kwargs)  # type: ignore[arg-type]


def _with_canary(manager: DeploymentManager, duration: float = 60.0, **activate: object) -> tuple[str, str]:
    stable = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(stable)
    candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary((10, 50, 100), duration))
    manager.activate_deployment(candidate, **activate)  # type: ignore[arg-type]
    return stable, candidate


def _state(manager: DeploymentManager, version_id: str) -> DeploymentState:
    info = manager.get_deployment_info(version_id)
    assert info is not None
    return info.state


def _on_candidate(manager: DeploymentManager, candidate: str) -> set[str]:
    return {k for k in KEYS if (t := manager.route(k)) is not None and t.version_id == candidate}


# --- pause / resume -----------------------------------------------------------------------------------


def test_pause_stops_the_stage_clock_and_resume_continues_it() -> None:
    """Paused 30s into a 60s stage for 70s: nothing advances it; after resume the stage has its 30s left."""
    clock = ManualClock()
    manager = _manager(clock)
    _, candidate = _with_canary(manager)
    start = clock.now()
    clock.advance(30)
    assert manager.pause_rollout(actor="alice", reason="looking at a graph") == candidate
    status = manager.get_rollout_status()
    assert status is not None
    assert status.paused
    assert status.next_step_at is None
    assert status.holding is not None
    assert "paused" in status.holding
    clock.advance(70)  # the stage would long be due
    assert manager.advance_rollout() is False
    manager.tick()
    assert manager.get_rollout_status().percentage == 10  # type: ignore[union-attr]
    manager.resume_rollout(actor="alice")
    status = manager.get_rollout_status()
    assert status is not None
    assert not status.paused
    assert status.next_step_at == start + 60 + 70  # the stage start moved on by the paused time
    clock.advance(29)
    assert manager.advance_rollout() is False
    clock.advance(1)
    assert manager.advance_rollout() is True
    assert manager.get_rollout_status().percentage == 50  # type: ignore[union-attr]
    actions = [(e.action, e.actor, e.reason) for e in manager.audit_log(candidate)]
    assert ("pause", "alice", "looking at a graph") in actions
    assert any(a == "resume" and "paused for 70.0s" in r for a, _, r in actions)


def test_pause_twice_and_resume_unpaused_are_refused() -> None:
    """pause on a paused rollout and resume on a running one say so; an A/B test has no stages to pause."""
    clock = ManualClock()
    manager = _manager(clock)
    _with_canary(manager)
    with pytest.raises(InvalidTransitionError, match="not paused"):
        manager.resume_rollout()
    manager.pause_rollout()
    with pytest.raises(InvalidTransitionError, match="already paused"):
        manager.pause_rollout()


def test_automatic_rollback_still_protects_a_paused_candidate() -> None:
    """A paused candidate reported failing is rolled back all the same."""
    clock = ManualClock()
    manager = _manager(clock, auto_rollback=True)
    stable, candidate = _with_canary(manager)
    manager.pause_rollout()
    assert manager.update_health_metrics(candidate, 1000, errors=500) is False
    assert manager.get_rollout_status() is None
    assert manager.get_active_version_id() == stable
    assert _state(manager, candidate) is S.ROLLED_BACK


def test_pause_survives_a_restart(tmp_path: Path) -> None:
    """The pause is in the store: a new manager sees it paused and keeps the clock stopped."""
    clock = ManualClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with DeploymentManager.open(url, follow=False, clock=clock) as manager:
        _with_canary(manager)
        manager.pause_rollout()
    clock.advance(600)
    with DeploymentManager.open(url, follow=False, clock=clock) as reopened:
        assert reopened.get_rollout_status().paused  # type: ignore[union-attr]
        reopened.tick()
        assert reopened.get_rollout_status().percentage == 10  # type: ignore[union-attr]


# --- abort / retry -----------------------------------------------------------------------------------


def test_abort_then_retry_reaches_exactly_the_same_keys() -> None:
    """Over 10k keys, the retried rollout's first stage serves the candidate to exactly the same keys."""
    clock = ManualClock()
    manager = _manager(clock)
    stable, candidate = _with_canary(manager)
    first = _on_candidate(manager, candidate)
    assert 800 < len(first) < 1200  # ~10%
    assert manager.abort_rollout(actor="alice", reason="graph looks odd") == stable
    assert _on_candidate(manager, candidate) == set()
    assert _state(manager, candidate) is S.ABORTED
    clock.advance(10)
    assert manager.retry_rollout(actor="alice") == candidate
    assert _on_candidate(manager, candidate) == first
    status = manager.get_rollout_status()
    assert status is not None
    assert status.stage == 1
    assert status.salt == candidate


def test_a_redeploy_would_reach_other_keys() -> None:
    """Why retry matters: the same bundle deployed again gets a new salt, so a different cohort."""
    clock = ManualClock()
    manager = _manager(clock)
    _, candidate = _with_canary(manager)
    first = _on_candidate(manager, candidate)
    manager.abort_rollout()
    again = manager.prepare_deployment(mini_bundle("2.0.0"), Canary((10, 50, 100), 60))
    manager.activate_deployment(again)
    assert _on_candidate(manager, again) != first


def test_abort_survives_a_restart_and_retry_works_after_it(tmp_path: Path) -> None:
    """ABORTED and its salt are stored: a new process retries for the same keys."""
    clock = ManualClock()
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with DeploymentManager.open(url, follow=False, clock=clock) as manager:
        _, candidate = _with_canary(manager)
        first = _on_candidate(manager, candidate)
        manager.abort_rollout()
    with DeploymentManager.open(url, follow=False, clock=clock) as reopened:
        assert _state(reopened, candidate) is S.ABORTED
        reopened.retry_rollout(candidate)
        assert _on_candidate(reopened, candidate) == first


def test_retry_needs_an_aborted_version_and_no_rollout_in_progress() -> None:
    """Retry of a version that is not aborted, or while a rollout runs, is refused."""
    clock = ManualClock()
    manager = _manager(clock)
    stable, candidate = _with_canary(manager)
    with pytest.raises(RolloutInProgressError):
        manager.retry_rollout(candidate)
    manager.promote()
    with pytest.raises(InvalidTransitionError, match="no aborted rollout"):
        manager.retry_rollout()
    with pytest.raises(InvalidTransitionError, match="it is active, not aborted"):
        manager.retry_rollout(candidate)
    with pytest.raises(InvalidTransitionError, match="it is superseded, not aborted"):
        manager.retry_rollout(stable)


# --- undo ------------------------------------------------------------------------------------------


def test_undo_returns_to_the_previous_version_and_a_second_undo_comes_back() -> None:
    """undo() makes the version the active one replaced active again; undo again flips back."""
    clock = ManualClock()
    manager = _manager(clock)
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(v1)
    v2 = manager.prepare_deployment(mini_bundle("2.0.0"))
    manager.activate_deployment(v2)
    assert manager.undo(actor="alice", reason="v2 misbehaves") == v1
    assert manager.get_active_version_id() == v1
    assert _state(manager, v2) is S.SUPERSEDED
    assert manager.undo() == v2
    entry = next(e for e in manager.audit_log(v1) if e.action == "undo")
    assert entry.actor == "alice"
    assert "v2 misbehaves" in entry.reason


def test_undo_to_a_chosen_version_and_as_a_canary() -> None:
    """undo(to=v1) skips v2; with a Canary strategy the version comes back in stages."""
    clock = ManualClock()
    manager = _manager(clock)
    v1, v2, v3 = (manager.prepare_deployment(mini_bundle(f"{n}.0.0")) for n in (1, 2, 3))
    for v in (v1, v2, v3):
        manager.activate_deployment(v)
    assert manager.undo(to=v1) == v1
    assert manager.get_active_version_id() == v1
    manager.undo(to=v2, strategy=Canary((20, 100), 30))
    status = manager.get_rollout_status()
    assert status is not None
    assert status.version_id == v2
    assert status.percentage == 20
    clock.advance(30)
    assert manager.advance_rollout()
    assert manager.get_active_version_id() == v2


def test_undo_refuses_what_it_cannot_bring_back() -> None:
    """The active version itself, a version never active, and a rollout in progress are refused."""
    clock = ManualClock()
    manager = _manager(clock)
    _, candidate = _with_canary(manager)
    with pytest.raises(InvalidTransitionError, match="in progress"):
        manager.undo()
    manager.promote()
    with pytest.raises(InvalidTransitionError, match="already active"):
        manager.undo(to=candidate)
    staged = manager.prepare_deployment(mini_bundle("9.0.0"))
    with pytest.raises(InvalidTransitionError, match="staged"):
        manager.undo(to=staged)


# --- activate early, cancel, schedules -----------------------------------------------------------------


def test_a_scheduled_version_activated_early_and_one_cancelled() -> None:
    """activate(now=True) swaps a scheduled version in before its time; cancel ends another; tick does nothing more."""
    clock = ManualClock()
    manager = _manager(clock)
    base = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(base)
    early = manager.prepare_deployment(mini_bundle("2.0.0"), Scheduled(clock.now() + 3600))
    dropped = manager.prepare_deployment(mini_bundle("3.0.0"), Scheduled(clock.now() + 7200))
    manager.activate_deployment(early, now=True, actor="alice")
    assert manager.get_active_version_id() == early
    manager.cancel_deployment(dropped, actor="alice", reason="not needed")
    assert _state(manager, dropped) is S.CANCELLED
    clock.advance(8000)
    assert manager.tick().actions == ()
    assert manager.get_active_version_id() == early
    with pytest.raises(InvalidTransitionError, match="cancelled"):
        manager.activate_deployment(dropped)


def test_a_schedule_never_silently_overrides_a_newer_manual_deploy() -> None:
    """D16: due after a person deployed another version, the schedule is held (once) with the commands to resolve it."""
    clock = ManualClock()
    manager = _manager(clock)
    base = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(base)
    scheduled = manager.prepare_deployment(mini_bundle("2.0.0"), Scheduled(clock.now() + 60))
    clock.advance(10)
    manual = manager.prepare_deployment(mini_bundle("3.0.0"))
    manager.activate_deployment(manual)
    clock.advance(60)
    report = manager.tick()
    assert manager.get_active_version_id() == manual
    (held,) = report.holding
    assert f"rule-engine activate {scheduled} --now" in held
    assert f"rule-engine cancel {scheduled}" in held
    manager.tick()
    assert [e.action for e in manager.audit_log(scheduled)].count("hold") == 1
    manager.activate_deployment(scheduled, now=True)
    assert manager.get_active_version_id() == scheduled


def test_a_schedule_prepared_after_a_deploy_still_activates() -> None:
    """The rule only holds a schedule a later deploy overtook: a schedule made after the deploy runs as planned."""
    clock = ManualClock()
    manager = _manager(clock)
    base = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(base)
    scheduled = manager.prepare_deployment(mini_bundle("2.0.0"), Scheduled(clock.now() + 60))
    clock.advance(60)
    assert manager.tick().actions == (f"activated scheduled {scheduled}",)


def test_pending_scheduled_versions_are_bounded() -> None:
    """D22: the 51st pending schedule is refused naming the limit; cancelling one makes room."""
    clock = ManualClock()
    manager = _manager(clock)
    pending = [
        manager.prepare_deployment(mini_bundle(f"1.0.{i}"), Scheduled(clock.now() + 3600 + i))
        for i in range(MAX_PENDING_SCHEDULED)
    ]
    with pytest.raises(DeploymentError, match=f"limit is {MAX_PENDING_SCHEDULED}"):
        manager.prepare_deployment(mini_bundle("2.0.0"), Scheduled(clock.now() + 9000))
    manager.prepare_deployment(mini_bundle("2.0.1"), BlueGreen())  # only schedules count
    manager.cancel_deployment(pending[0])
    manager.prepare_deployment(mini_bundle("2.0.2"), Scheduled(clock.now() + 9000))


# --- progress deadline ---------------------------------------------------------------------------------


def test_a_progress_deadline_holds_a_stage_without_a_verdict() -> None:
    """No traffic for the deadline: the rollout is marked as past it (once) and says why it holds."""
    clock = ManualClock()
    manager = _manager(clock)
    _, candidate = _with_canary(manager, duration=10, progress_deadline=120)
    clock.advance(119)
    assert manager.tick().actions == ()
    clock.advance(1)
    report = manager.tick()
    assert any("progress deadline of 120s exceeded" in a for a in report.actions)
    status = manager.get_rollout_status()
    assert status is not None
    assert status.deadline_exceeded_at == clock.now()
    assert status.holding is not None
    assert "progress deadline" in status.holding
    clock.advance(60)
    assert manager.tick().actions == ()  # noted once
    assert _state(manager, candidate) is S.ROLLING_OUT


def test_a_progress_deadline_aborts_when_asked() -> None:
    """With progress_deadline_abort the stalled rollout is aborted: traffic back to stable, candidate ABORTED."""
    clock = ManualClock()
    manager = _manager(clock)
    stable, candidate = _with_canary(manager, duration=10, progress_deadline=60, progress_deadline_abort=True)
    clock.advance(30)
    manager.pause_rollout()  # a paused rollout does not run out of time
    clock.advance(300)
    manager.tick()
    assert _state(manager, candidate) is S.ROLLING_OUT
    manager.resume_rollout()  # 30s of the 60s deadline were used before the pause
    clock.advance(29)
    manager.tick()
    assert _state(manager, candidate) is S.ROLLING_OUT
    clock.advance(1)
    manager.tick()
    assert _state(manager, candidate) is S.ABORTED
    assert manager.get_active_version_id() == stable
    (entry,) = [e for e in manager.audit_log(candidate) if e.action == "abort"]
    assert entry.actor == "controller"
    assert "progress deadline of 60s" in entry.reason


def test_a_progress_deadline_must_be_positive() -> None:
    """A zero, negative or infinite deadline is refused before anything changes."""
    clock = ManualClock()
    manager = _manager(clock)
    stable = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(stable)
    candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary((10, 100), 10))
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="progress_deadline"):
            manager.activate_deployment(candidate, progress_deadline=bad)
    assert _state(manager, candidate) is S.STAGED


# --- origin ----------------------------------------------------------------------------------------


def test_the_audit_records_the_origin_next_to_the_actor(tmp_path: Path) -> None:
    """origin= is stored on every entry an operation writes, and read back from SQLite."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with DeploymentManager.open(url, follow=False) as manager:
        v1 = manager.prepare_deployment(mini_bundle("1.0.0"), origin="alice@host-a")
        manager.activate_deployment(v1, actor="alice", origin="alice@host-a")
        manager.prepare_deployment(mini_bundle("2.0.0"))
    with DeploymentManager.open(url, follow=False) as reopened:
        origins = [(e.action, e.origin) for e in reopened.audit_log()]
    assert origins == [("prepare", "alice@host-a"), ("activate", "alice@host-a"), ("prepare", None)]


def test_every_audit_entry_records_the_origin_given_through_the_manager(tmp_path: Path) -> None:
    """origin= (the CLI passes user@host) is stored with the audit entry; a schema 1 file gains the column
    when it is upgraded (tests/test_store_integrity.py)."""
    path = tmp_path / "state.db"
    with DeploymentManager.open(f"sqlite:///{path}", follow=False) as manager:
        manager.prepare_deployment(mini_bundle("1.0.0"))
        manager.prepare_deployment(mini_bundle("2.0.0"), origin="bob@h")
        assert [e.origin for e in manager.audit_log()] == [None, "bob@h"]


@given(
    stages=st.lists(st.integers(1, 99), min_size=0, max_size=4, unique=True).map(lambda v: (*sorted(v), 100)),
    advances=st.integers(0, 4),
    paused=st.booleans(),
)
def test_retry_always_restarts_at_the_first_stage_with_the_aborted_salt(
    stages: tuple[int, ...], advances: int, paused: bool
) -> None:
    """Whatever the stages and however far the canary got (paused or not), retry = first stage, same salt."""
    clock = ManualClock()
    manager = _manager(clock)
    stable = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(stable)
    candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary(stages, 10))
    manager.activate_deployment(candidate)
    if manager.get_rollout_status() is None:
        return  # a one-stage canary (100) is a swap: nothing to abort
    for _ in range(min(advances, len(stages) - 2)):
        clock.advance(10)
        manager.advance_rollout()
    salt = manager.get_rollout_status().salt  # type: ignore[union-attr]
    if paused:
        manager.pause_rollout()
    manager.abort_rollout()
    manager.retry_rollout()
    status = manager.get_rollout_status()
    assert status is not None
    assert (status.stage, status.percentage, status.salt, status.paused) == (1, stages[0], salt, False)


def _undone_to_v1(clock: ManualClock) -> tuple[DeploymentManager, str]:
    """v1 then v2 deployed (auto rollback on), then ``undo`` back to v1: the manager and v1."""
    from rule_engine import HealthThresholds

    manager = _manager(clock, auto_rollback=True, thresholds=HealthThresholds(min_evaluations=10))
    v1 = manager.prepare_deployment(mini_bundle("1.0.0"))
    manager.activate_deployment(v1)
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0")))
    clock.advance(1)
    assert manager.undo(actor="alice") == v1
    return manager, v1


def test_a_version_undo_put_back_is_never_rolled_back_automatically_while_it_bakes() -> None:
    """undo is an operator's choice of a known version: even unhealthy in its bake time, the controller leaves it."""
    manager, v1 = _undone_to_v1(ManualClock())
    manager.update_health_metrics(v1, evaluations=100, errors=90)  # during v1's new bake time
    manager.tick()
    assert manager.get_active_version_id() == v1
    assert not any(e.action == "rollback" for e in manager.audit_log())


def test_a_version_deployed_after_an_undo_bakes_and_is_rolled_back_once() -> None:
    """D5 with undo: the guard is on the reinstated version only; the next deployment bakes (one rollback)."""
    clock = ManualClock()
    manager, v1 = _undone_to_v1(clock)
    clock.advance(1)
    v3 = manager.prepare_deployment(mini_bundle("3.0.0"))
    manager.activate_deployment(v3)
    manager.update_health_metrics(v3, evaluations=100, errors=90)  # v3 bakes: rolled back to v1
    assert manager.get_active_version_id() == v1
    manager.update_health_metrics(v1, evaluations=100, errors=90)  # v1 reinstated (twice): left alone
    manager.tick()
    assert manager.get_active_version_id() == v1
    rolled_back = [e.version_id for e in manager.audit_log() if e.action == "rollback" and e.to_state == "rolled_back"]
    assert rolled_back == [v3]
