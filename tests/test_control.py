"""The pure planners of ``control/transitions.py`` on ControlState values (the strategies: test_strategies.py).

A planner takes a state, the time and its arguments and returns a Change (new state, audit entries,
log events) or raises a typed error; it never changes its input. These tests call the planners
directly, without a manager or a store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import given

from rule_engine.control import strategies as strategies_module
from rule_engine.control.records import ControlState, VersionRecord
from rule_engine.control.states import TRANSITIONS, DeploymentState, check_transition
from rule_engine.control.strategies import (
    ABTest,
    BlueGreen,
    Canary,
    Scheduled,
    Strategy,
    register,
)
from rule_engine.control.transitions import (
    Change,
    activate,
    advance,
    conclude,
    end_experiment,
    evict,
    hold,
    prepare,
    promote,
    protected,
    rollback,
    scheduled_due,
)
from rule_engine.errors import (
    ActivationTimeNotReachedError,
    InvalidTransitionError,
    NoPreviousVersionError,
    RolloutInProgressError,
    VersionNotFoundError,
)
from tests.strategies import canaries

S = DeploymentState
T0 = 1_700_000_000.0


# --- building states with the planners themselves ----------------------------------------------------


def _record(seq: int, strategy: Strategy) -> VersionRecord:
    return VersionRecord(
        version_id=f"b@{seq}",
        seq=seq,
        bundle_id="b",
        bundle_version=str(seq),
        digest=f"digest-{seq}",
        deployed_by="alice",
        strategy=strategy,
        state=S.STAGED,
        created_at=T0,
        updated_at=T0,
    )


def _staged(state: ControlState, strategy: Strategy | None = None, now: float = T0) -> tuple[ControlState, str]:
    record = _record(state.next_seq, strategy or BlueGreen())
    return prepare(state, record, "{}", now, max_history=10).state, record.version_id


def _serving(now: float = T0) -> tuple[ControlState, str]:
    """A state where one blue-green version serves all traffic."""
    state, v1 = _staged(ControlState(), now=now)
    return activate(state, v1, now, "alice").state, v1


def _rolling(strategy: Strategy, now: float = T0) -> tuple[ControlState, str, str]:
    """A state with a stable version and ``strategy``'s candidate rolling out against it."""
    state, stable = _serving(now)
    state, candidate = _staged(state, strategy, now)
    return activate(state, candidate, now, "alice").state, stable, candidate


def _audit(change: Change) -> list[tuple[str, str, str | None, str, str]]:
    return [(e.action, e.version_id, e.from_state, e.to_state, e.reason) for e in change.audit]


def _names(change: Change) -> list[str]:
    return [name for name, _ in change.events]


def _refused(state: ControlState, error: type[Exception], match: str, plan: Any, *args: Any, **kwargs: Any) -> None:
    """``plan(state, ...)`` raises ``error`` and leaves ``state`` as it was."""
    before = state.to_dict()
    with pytest.raises(error, match=match):
        plan(state, *args, **kwargs)
    assert state.to_dict() == before


# --- the transition table ---------------------------------------------------------------------------


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_check_transition_allows_exactly_the_table(current: S, target: S) -> None:
    """A move is allowed iff the table lists it; a refusal names the current, requested and allowed states."""
    if target in TRANSITIONS[current]:
        check_transition("v", current, target, "act")
        return
    allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (terminal state)"
    message = (
        f"cannot act 'v': it is {current.value}, and {current.value} -> {target.value} is not allowed "
        f"(allowed from {current.value}: {allowed})"
    )
    with pytest.raises(InvalidTransitionError) as caught:
        check_transition("v", current, target, "act")
    assert str(caught.value) == message


# --- prepare ------------------------------------------------------------------------------------------


def test_prepare_stages_a_version_with_its_audit_and_event() -> None:
    """prepare adds a STAGED record and its bundle, bumps next_seq, and says so in the audit and the log."""
    empty = ControlState()
    record = _record(1, Canary((10, 100), 60))
    change = prepare(empty, record, '{"x": 1}', T0, max_history=10)
    assert empty == ControlState()  # the input is a value: untouched
    assert change.result == "b@1"
    assert change.bundles == {"b@1": '{"x": 1}'}
    assert change.state.next_seq == 2
    assert change.state.versions["b@1"].state is S.STAGED
    assert change.state.active is None
    assert not change.serving_changed
    assert _audit(change) == [("prepare", "b@1", "preparing", "staged", "bundle b@1")]
    assert change.audit[0].strategy == "canary"
    assert change.events == [
        (
            "deployment.prepared",
            {
                "actor": "alice",
                "version_id": "b@1",
                "strategy": "canary",
                "bundle_id": "b",
                "bundle_version": "1",
                "digest": "digest-1",
                "to_state": "staged",
            },
        )
    ]


def test_prepare_beyond_the_history_limit_evicts_the_oldest_unprotected_version() -> None:
    """With max_history versions kept, the oldest version neither serving nor a rollback target goes."""
    state, _ = _serving()
    for _ in range(3):
        state, _ = _staged(state)
    change = prepare(state, _record(state.next_seq, BlueGreen()), "{}", T0 + 1, max_history=4)
    assert change.evicted == ("b@2",)
    assert list(change.state.versions) == ["b@1", "b@3", "b@4", "b@5"]
    assert ("evict", "b@2", "staged", "evicted", "history is limited to 4 versions") in _audit(change)
    assert _names(change) == ["deployment.prepared", "history.evicted"]


# --- activate -----------------------------------------------------------------------------------------


def test_activate_blue_green_supersedes_the_previous_version() -> None:
    """A blue-green activation serves all traffic at once; the old version is SUPERSEDED and in the lineage."""
    state, v1 = _serving()
    state, v2 = _staged(state)
    change = activate(state, v2, T0 + 5, "bob")
    new = change.state
    assert (new.active, new.rollout, new.lineage) == (v2, None, (v1, v2))
    assert new.versions[v2].state is S.ACTIVE
    assert new.versions[v2].activated_at == T0 + 5
    assert new.versions[v1].state is S.SUPERSEDED
    assert new.versions[v1].finished_at == T0 + 5
    assert change.serving_changed
    assert _audit(change) == [
        ("activate", v2, "staged", "active", "blue-green"),
        ("activate", v1, "active", "superseded", f"replaced by {v2}"),
    ]
    name, fields = change.events[0]
    assert name == "deployment.activated"
    assert fields["previous_version_id"] == v1
    assert fields["actor"] == "bob"


def test_activate_canary_starts_a_rollout_at_the_first_stage() -> None:
    """A canary over a stable version rolls out at its first stage's share, salted by its own id."""
    state, stable, candidate = _rolling(Canary((10, 50, 100), 60))
    rollout = state.rollout
    assert rollout is not None
    assert (rollout.kind, rollout.candidate, rollout.stable) == ("canary", candidate, stable)
    assert (rollout.share_bp, rollout.stage_index, rollout.salt) == (1000, 0, candidate)
    assert state.active == stable
    assert state.versions[candidate].state is S.ROLLING_OUT


def test_activate_events_say_the_rollout_started() -> None:
    """rollout.started names the candidate, the stable version and the first percentage."""
    state, stable = _serving()
    state, candidate = _staged(state, ABTest(0.7, 600))
    change = activate(state, candidate, T0, "alice")
    assert change.state.rollout is not None
    assert change.state.rollout.share_bp == 3000  # B gets what A's 70% leaves
    assert _audit(change) == [("activate", candidate, "staged", "rolling_out", "A/B test 70%/30% for 600s")]
    assert change.events == [
        (
            "rollout.started",
            {
                "actor": "alice",
                "version_id": candidate,
                "stable_version_id": stable,
                "strategy": "ab-test",
                "percentage": 30.0,
                "from_state": "staged",
                "to_state": "rolling_out",
            },
        )
    ]


def test_activate_canary_with_nothing_serving_swaps_and_says_why() -> None:
    """Without a stable version to compare with, a canary becomes ACTIVE at once; the reason says so."""
    state, v1 = _staged(ControlState(), Canary((10, 100), 60))
    change = activate(state, v1, T0, "alice")
    assert change.state.active == v1
    assert change.state.rollout is None
    assert _audit(change)[0][4] == "no stable version to compare with: canary 10% -> 100%, 60s per stage"


def test_activate_single_stage_canary_is_an_atomic_swap() -> None:
    """A canary whose only stage is 100% is a swap, even with a stable version."""
    state, _, candidate = _rolling(Canary((100,), 60))
    assert state.rollout is None
    assert state.active == candidate


@pytest.mark.parametrize("current", [S.ACTIVE, S.ROLLING_OUT])
def test_activate_what_already_serves_is_refused(current: S) -> None:
    """Activating the active version or the candidate is refused and says it already serves."""
    if current is S.ACTIVE:
        state, version = _serving()
    else:
        state, _, version = _rolling(Canary((10, 100), 60))
    _refused(state, InvalidTransitionError, f"already {current.value}", activate, version, T0, "bob")


def test_activate_a_rolled_back_version_is_refused_with_the_allowed_states() -> None:
    """A terminal version cannot be activated; the message names its state and that nothing is allowed."""
    state, _, candidate = _rolling(Canary((10, 100), 60))
    state = rollback(state, T0, "bob", reason="bad").state
    _refused(
        state,
        InvalidTransitionError,
        r"it is rolled_back, and rolled_back -> active is not allowed \(allowed from rolled_back: none",
        activate,
        candidate,
        T0,
        "bob",
    )


def test_activate_a_superseded_version_serves_it_again() -> None:
    """SUPERSEDED -> ACTIVE is allowed: an old version can be activated again."""
    state, v1 = _serving()
    state, v2 = _staged(state)
    state = activate(state, v2, T0, "alice").state
    change = activate(state, v1, T0 + 1, "alice")
    assert change.state.active == v1
    assert change.state.lineage == (v2, v1)


def test_activate_unknown_version_is_not_found() -> None:
    """An unknown id raises VersionNotFoundError naming it."""
    state, _ = _serving()
    _refused(state, VersionNotFoundError, "Version not found: 'nope'", activate, "nope", T0, "bob")


def test_activate_scheduled_waits_for_its_time() -> None:
    """Before its activation time a scheduled version is refused; at that time it swaps."""
    state, _ = _serving()
    state, later = _staged(state, Scheduled(T0 + 60))
    _refused(state, ActivationTimeNotReachedError, "60s from now", activate, later, T0, "bob")
    assert activate(state, later, T0 + 60, "controller").state.active == later


def test_activate_during_a_rollout_needs_supersede() -> None:
    """A second rollout is refused while one runs; with supersede the first is rolled back first."""
    state, stable, first = _rolling(Canary((10, 100), 60))
    state, second = _staged(state, Canary((20, 100), 60))
    _refused(state, RolloutInProgressError, f"rollout of {first!r} is in progress", activate, second, T0, "bob")
    change = activate(state, second, T0 + 1, "bob", supersede=True)
    assert change.state.versions[first].state is S.ROLLED_BACK
    assert change.state.rollout is not None
    assert (change.state.rollout.candidate, change.state.rollout.stable) == (second, stable)
    assert change.rolled_back == first
    assert _names(change) == ["rollback.completed", "rollout.started"]
    assert _audit(change)[:2] == [
        ("activate", first, "rolling_out", "rolling_back", f"superseded by {second}"),
        ("activate", first, "rolling_back", "rolled_back", f"superseded by {second}"),
    ]


# --- advance and promote ------------------------------------------------------------------------------


def test_advance_waits_for_the_stage_duration_and_for_health() -> None:
    """Before the stage has lasted its duration, or while unhealthy, advance changes nothing."""
    state, _, _ = _rolling(Canary((10, 50, 100), 60))
    for now, healthy in ((T0 + 59.9, True), (T0 + 60, False)):
        change = advance(state, now, "controller", healthy=healthy)
        assert change.result is False
        assert change.state is state
        assert (change.audit, change.events) == ([], [])


def test_advance_walks_the_stages_then_completes() -> None:
    """Each due stage raises the share (audited, rollout.advanced); the last one makes the candidate ACTIVE."""
    state, stable, candidate = _rolling(Canary((10, 50, 100), 60))
    change = advance(state, T0 + 60, "controller", healthy=None)
    assert change.result is True
    assert change.state.rollout is not None
    assert (change.state.rollout.share_bp, change.state.rollout.stage_index) == (5000, 1)
    assert change.state.rollout.stage_started_at == T0 + 60
    assert _audit(change) == [("advance", candidate, "rolling_out", "rolling_out", "stage 2 of 3: 10% -> 50%")]
    assert change.events[0] == (
        "rollout.advanced",
        {
            "actor": "controller",
            "version_id": candidate,
            "strategy": "canary",
            "stage": 2,
            "stages": 3,
            "from_percentage": 10.0,
            "percentage": 50.0,
        },
    )
    assert advance(change.state, T0 + 119, "controller", healthy=True).result is False  # the new stage's clock
    done = advance(change.state, T0 + 120, "controller", healthy=True)
    assert done.state.active == candidate
    assert done.state.rollout is None
    assert done.state.versions[stable].state is S.SUPERSEDED
    assert _audit(done)[0] == ("advance", candidate, "rolling_out", "active", "canary completed after 3 stages")


def test_advance_and_promote_refuse_without_a_canary() -> None:
    """With no rollout, or an A/B test, advance and promote are refused with a hint of what applies."""
    state, _ = _serving()
    _refused(state, InvalidTransitionError, "cannot advance: no rollout is in progress", advance, T0, "c", healthy=True)
    ab, _, candidate = _rolling(ABTest())
    hint = f"cannot promote: {candidate!r} is in a ab-test; use conclude_experiment\\(winner\\)"
    _refused(ab, InvalidTransitionError, hint, promote, T0, "bob")
    _refused(ab, InvalidTransitionError, "cannot advance: .* use conclude_experiment", advance, T0, "c", healthy=True)


def test_promote_finishes_the_canary_now() -> None:
    """promote makes the candidate ACTIVE at once, whatever the stage; the reason names who promoted."""
    state, stable, candidate = _rolling(Canary((10, 50, 100), 3600))
    change = promote(state, T0 + 1, "bob")
    assert change.result == candidate
    assert (change.state.active, change.state.rollout, change.state.lineage) == (candidate, None, (stable, candidate))
    assert _audit(change)[0] == ("promote", candidate, "rolling_out", "active", "promoted by bob")
    assert _names(change) == ["deployment.activated"]


# --- A/B tests: end_experiment and conclude ---------------------------------------------------------


def test_end_experiment_marks_the_end_once_after_the_duration() -> None:
    """After test_duration_secs the test is marked ended (split kept); before, again, or for a canary: None."""
    state, stable, candidate = _rolling(ABTest(0.5, 600))
    assert end_experiment(state, T0 + 599, "controller") is None
    change = end_experiment(state, T0 + 600, "controller")
    assert change is not None
    assert change.state.rollout is not None
    assert change.state.rollout.ended_at == T0 + 600
    assert change.state.rollout.share_bp == 5000
    assert _audit(change) == [
        (
            "end-experiment",
            candidate,
            "rolling_out",
            "rolling_out",
            "test duration of 600s has passed; the split stays until a winner is chosen",
        )
    ]
    assert change.events == [
        (
            "experiment.ended",
            {"actor": "controller", "version_id": candidate, "stable_version_id": stable, "duration_secs": 600.0},
        )
    ]
    assert end_experiment(change.state, T0 + 700, "controller") is None
    canary, _, _ = _rolling(Canary((10, 100), 1))
    assert end_experiment(canary, T0 + 10_000, "controller") is None
    assert end_experiment(_serving()[0], T0 + 10_000, "controller") is None


@pytest.mark.parametrize("b_wins", [True, False])
def test_conclude_serves_the_winner(b_wins: bool) -> None:
    """B winning makes it ACTIVE; A winning rolls B back; both say experiment.concluded."""
    state, stable, candidate = _rolling(ABTest())
    winner = candidate if b_wins else stable
    change = conclude(state, winner, T0 + 1, "bob")
    assert change.result == winner
    assert change.state.rollout is None
    assert change.state.active == winner
    assert change.state.versions[candidate].state is (S.ACTIVE if b_wins else S.ROLLED_BACK)
    expected = "deployment.activated" if b_wins else "rollback.completed"
    assert _names(change) == [expected, "experiment.concluded"]
    assert change.events[-1][1] == {
        "actor": "bob",
        "version_id": candidate,
        "winner": winner,
        "stable_version_id": stable,
    }


def test_conclude_refuses_outsiders_and_canaries() -> None:
    """The winner must be A or B; unknown ids are not found; a canary cannot be concluded."""
    state, stable, candidate = _rolling(ABTest())
    state, other = _staged(state)
    _refused(
        state,
        InvalidTransitionError,
        f"the winner is {stable!r} \\(A\\) or {candidate!r} \\(B\\)",
        conclude,
        other,
        T0,
        "b",
    )
    _refused(state, VersionNotFoundError, "Version not found: 'ghost'", conclude, "ghost", T0, "bob")
    canary, _, _ = _rolling(Canary((10, 100), 60))
    _refused(
        canary,
        InvalidTransitionError,
        r"is in a canary; use advance_rollout\(\) or promote\(\)",
        conclude,
        "x",
        T0,
        "b",
    )


# --- hold ---------------------------------------------------------------------------------------------


def test_hold_marks_the_candidate_once() -> None:
    """hold stores the reason on the rollout (audited, rollout.held); holding again or another id does nothing."""
    state, _, candidate = _rolling(Canary((10, 100), 60))
    change = hold(state, T0, "controller", candidate=candidate, reason="error rate 9%")
    assert change.state.rollout is not None
    assert change.state.rollout.held == "error rate 9%"
    assert _audit(change) == [("hold", candidate, "rolling_out", "rolling_out", "held for a person: error rate 9%")]
    assert change.events == [
        (
            "rollout.held",
            {"actor": "controller", "version_id": candidate, "strategy": "canary", "reason": "error rate 9%"},
        )
    ]
    for again in (
        hold(change.state, T0, "c", candidate=candidate, reason="x"),
        hold(state, T0, "c", candidate="z", reason="x"),
    ):
        assert (again.audit, again.events) == ([], [])
    assert advance(change.state, T0 + 60, "controller", healthy=True).result is True  # the controller checks held


# --- rollback -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("automatic", [False, True])
def test_rollback_during_a_rollout_returns_traffic_to_stable(automatic: bool) -> None:
    """The candidate is ROLLED_BACK through ROLLING_BACK; the event says who triggered it."""
    state, stable, candidate = _rolling(Canary((10, 100), 60))
    change = rollback(state, T0 + 1, "ops", reason="bad", automatic=automatic)
    assert change.result == stable
    assert change.rolled_back == candidate
    assert (change.state.active, change.state.rollout) == (stable, None)
    assert change.state.versions[candidate].failure_reason == "bad"
    assert _audit(change) == [
        ("rollback", candidate, "rolling_out", "rolling_back", "bad"),
        ("rollback", candidate, "rolling_back", "rolled_back", "bad"),
    ]
    assert change.events == [
        (
            "rollback.completed",
            {
                "actor": "ops",
                "version_id": candidate,
                "serving_version_id": stable,
                "strategy": "canary",
                "from_state": "rolling_out",
                "to_state": "rolled_back",
                "reason": "bad",
                "trigger": "automatic" if automatic else "manual",
            },
        )
    ]


def test_rollback_of_the_active_version_walks_the_lineage_back() -> None:
    """Outside a rollout, rollback restores the previous active version and shortens the lineage."""
    state, v1 = _serving()
    state, v2 = _staged(state)
    state = activate(state, v2, T0, "alice").state
    change = rollback(state, T0 + 1, "ops", reason="oops")
    assert (change.state.active, change.state.lineage, change.result) == (v1, (v1,), v1)
    assert change.state.versions[v1].finished_at is None
    assert _audit(change) == [
        ("rollback", v2, "active", "rolling_back", "oops"),
        ("rollback", v2, "rolling_back", "rolled_back", "oops"),
        ("rollback", v1, "superseded", "active", f"rollback from {v2}"),
    ]
    assert change.events[0][1]["trigger"] == "manual"


def test_rollback_without_a_previous_version_is_refused() -> None:
    """Nothing active, or only one version in the lineage: NoPreviousVersionError says which."""
    _refused(ControlState(), NoPreviousVersionError, "no version is active", rollback, T0, "ops", reason="r")
    state, v1 = _serving()
    _refused(state, NoPreviousVersionError, f"{v1!r} is the only version in the history", rollback, T0, "o", reason="r")


# --- the controller's questions: scheduled_due, protected, evict --------------------------------------


def test_scheduled_due_lists_staged_schedules_whose_time_has_come() -> None:
    """Due scheduled versions come earliest first (then by seq); future ones and other strategies do not."""
    state, _ = _serving()
    state, late = _staged(state, Scheduled(T0 + 20))
    state, early = _staged(state, Scheduled(T0 + 10))
    state, tie = _staged(state, Scheduled(T0 + 10))
    state, future = _staged(state, Scheduled(T0 + 99))
    state, _ = _staged(state, Canary((10, 100), 0))
    assert [r.version_id for r in scheduled_due(state, T0 + 20)] == [early, tie, late]
    assert scheduled_due(state, T0 + 9) == []
    assert future in [r.version_id for r in scheduled_due(state, T0 + 99)]
    activated = activate(state, early, T0 + 20, "controller").state
    assert early not in [r.version_id for r in scheduled_due(activated, T0 + 20)]


def test_protected_covers_what_serves_what_rolls_out_and_pending_schedules() -> None:
    """Active, rollback target, candidate, stable and pending scheduled versions are never evicted."""
    state, v1 = _serving()
    state, v2 = _staged(state)
    state = activate(state, v2, T0, "alice").state
    state, plain = _staged(state)
    state, pending = _staged(state, Scheduled(T0 + 60))
    state, candidate = _staged(state, Canary((10, 100), 60))
    state = activate(state, candidate, T0, "alice").state
    assert protected(state) == {v1, v2, pending, candidate}
    assert plain not in protected(state)


def test_evict_keeps_protected_versions_even_over_the_limit() -> None:
    """When only protected versions remain, evict drops nothing, even beyond max_history."""
    state, _, _ = _rolling(Canary((10, 100), 60))
    change = Change(state, "prepare", "alice")
    evict(change, 1, T0)
    assert change.state is state
    assert (change.evicted, change.audit, change.events) == ((), [], [])


# --- the planners with any strategy ---------------------------------------------------------------


@given(canaries())
def test_advancing_a_canary_walks_its_stages_then_activates(canary: Canary) -> None:
    """Advanced at the end of every stage, a rollout takes each stage's share in turn, then serves all traffic."""
    state, stable = _serving()
    state, candidate = _staged(state, canary)
    state = activate(state, candidate, T0, "alice").state
    if len(canary.stages) == 1:
        assert state.active == candidate  # a single 100% stage is a swap
        return
    seen, now = [], T0
    while state.rollout is not None:
        seen.append(state.rollout.share_bp)
        assert len(seen) <= len(canary.stages)
        now += canary.stage_duration_secs + 0.001  # just past the stage's end (float time is ~0.2 us coarse here)
        change = advance(state, now, "controller", healthy=True)
        assert change.result is True
        state = change.state
    assert seen == [round(stage * 100) for stage in canary.stages[:-1]]
    assert (state.active, state.versions[stable].state) == (candidate, S.SUPERSEDED)


# --- a fifth strategy touches one module ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Halves(Strategy):
    """A test-only strategy: half the traffic for ``pause`` seconds, then all of it."""

    pause: float = 30.0
    kind: ClassVar[str] = "halves"
    splits_traffic: ClassVar[bool] = True

    def first_share_bp(self) -> int:
        return 5_000

    def next_share_bp(self, stage_index: int) -> int | None:
        return 10_000 if stage_index == 0 else None

    def stage_percentages(self) -> tuple[float, ...]:
        return (50, 100)

    def step_ends_at(self, started_at: float, stage_started_at: float) -> float:
        return stage_started_at + self.pause

    def step_is_over(self, now: float, started_at: float, stage_started_at: float) -> bool:
        return now - stage_started_at >= self.pause

    def describe(self) -> str:
        return f"halves, {self.pause:g}s"


def test_a_new_strategy_needs_no_change_to_the_planners(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered strategy is stored, rolled out and advanced by the planners as they are."""
    monkeypatch.setattr(strategies_module, "_REGISTRY", dict(strategies_module._REGISTRY))
    register(_Halves)
    state, stable, candidate = _rolling(_Halves(30))
    assert state.rollout is not None
    assert (state.rollout.kind, state.rollout.share_bp, state.rollout.finishes_by_itself) == ("halves", 5000, True)
    assert ControlState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert advance(state, T0 + 29, "controller", healthy=True).result is False
    done = advance(state, T0 + 30, "controller", healthy=True)
    assert done.state.active == candidate
    assert _audit(done)[0][4] == "halves completed after 2 stages"
    assert done.state.versions[stable].state is S.SUPERSEDED
