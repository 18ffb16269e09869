"""The rollout strategies answer their own questions: shares, steps, finishing, CLI spelling, stored form."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rule_engine.control.records import Rollout
from rule_engine.control.strategies import (
    ABTest,
    BlueGreen,
    Canary,
    Scheduled,
    Strategy,
    register,
    require_strategy,
    rollout_kinds,
    strategy_class,
    strategy_for_cli,
    strategy_from_dict,
    strategy_kinds,
)
from rule_engine.errors import InvalidStrategyError
from tests.strategies import canaries, rollout_strategies


@given(canaries())
def test_canary_shares_strictly_increase_and_end_at_all_traffic(canary: Canary) -> None:
    """first_share_bp then next_share_bp stage by stage: strictly increasing, ending at 10,000 bp, then None."""
    shares = [canary.first_share_bp()]
    for index in range(len(canary.stages) - 1):
        share = canary.next_share_bp(index)
        assert share is not None
        shares.append(share)
    assert all(b > a for a, b in itertools.pairwise(shares))
    assert shares[-1] == 10_000
    assert canary.next_share_bp(len(canary.stages) - 1) is None


@given(rollout_strategies)
def test_every_strategy_round_trips_through_its_json_form(strategy: Strategy) -> None:
    """strategy_from_dict(to_dict()) gives back an equal strategy, also through JSON text."""
    data = strategy.to_dict()
    assert data["kind"] == strategy.kind
    assert strategy_from_dict(data) == strategy
    assert strategy_from_dict(json.loads(json.dumps(data))) == strategy
    assert strategy_class(strategy.kind) is type(strategy)


@pytest.mark.parametrize(("percent", "bp"), [(1.1, 110), (0.07, 7), (0.29, 29), (12.34, 1234)])
def test_canary_stages_with_two_decimals_are_accepted(percent: float, bp: int) -> None:
    """Two-decimal stages whose float times 100 is not exact (1.1 * 100 = 110.00000000000001) are valid."""
    assert Canary([percent, 100]).first_share_bp() == bp


def test_canary_stages_with_three_decimals_are_refused() -> None:
    """A stage finer than a basis point is refused."""
    with pytest.raises(InvalidStrategyError, match="more than two decimals"):
        Canary([12.345, 100])


def test_stored_forms_are_unchanged() -> None:
    """The JSON form stores use is what it was (stores written before keep loading)."""
    assert BlueGreen().to_dict() == {"kind": "blue-green"}
    assert Canary((10, 100), 60).to_dict() == {"kind": "canary", "stages": [10, 100], "stage_duration_secs": 60.0}
    assert ABTest(0.6, 30).to_dict() == {"kind": "ab-test", "split_ratio": 0.6, "test_duration_secs": 30.0}
    assert Scheduled(5).to_dict() == {"kind": "scheduled", "activation_time": 5.0}


@pytest.mark.parametrize("data", [{"kind": "linear"}, {}, {"kind": ["canary"]}])
def test_unknown_kinds_are_invalid_strategies(data: dict[str, Any]) -> None:
    """A stored form with an unknown kind raises InvalidStrategyError naming the kind."""
    with pytest.raises(InvalidStrategyError, match="unknown strategy kind"):
        strategy_from_dict(data)


@given(st.integers(min_value=1, max_value=9_999))
def test_ab_test_shares_add_up_to_all_traffic(bp: int) -> None:
    """B's first share plus A's split ratio is all traffic; an A/B test has no further stage."""
    ab = ABTest(bp / 10_000, 60)
    assert ab.first_share_bp() + round(ab.split_ratio * 10_000) == 10_000
    assert ab.next_share_bp(0) is None


def test_each_strategy_answers_when_its_step_ends_and_how_it_finishes() -> None:
    """Canary steps from the stage start, A/B from the test start; atomic swaps have no steps."""
    canary, ab = Canary((10, 100), 60), ABTest(0.5, 600)
    assert canary.step_ends_at(started_at=100.0, stage_started_at=400.0) == 460.0
    assert ab.step_ends_at(started_at=100.0, stage_started_at=400.0) == 700.0
    assert canary.step_is_over(460.0, 100.0, 400.0)
    assert not canary.step_is_over(459.0, 100.0, 400.0)
    assert ab.step_is_over(700.0, 100.0, 400.0)
    assert not ab.step_is_over(699.0, 100.0, 400.0)
    for atomic in (BlueGreen(), Scheduled(9)):
        assert (atomic.first_share_bp(), atomic.step_ends_at(1.0, 2.0), atomic.stage_percentages()) == (None, None, ())
    assert (canary.finishes_by_itself, ab.finishes_by_itself) == (True, False)
    assert (Scheduled(9).activates_at(), BlueGreen().activates_at(), canary.activates_at()) == (9.0, None, None)
    assert canary.stage_percentages() == (10, 100)


def test_the_registry_knows_every_kind_in_cli_order() -> None:
    """Kinds in the CLI's order; only canary and A/B tests can be stored as a rollout."""
    assert strategy_kinds() == ("blue-green", "canary", "ab-test", "scheduled")
    assert rollout_kinds() == ("canary", "ab-test")
    stored = {"candidate": "b", "stable": "a", "share_bp": 1000, "stage_index": 0, "started_at": 0.0}
    stored |= {"stage_started_at": 0.0, "salt": "b"}
    assert Rollout.from_dict({**stored, "kind": "canary"}).finishes_by_itself is True
    assert Rollout.from_dict({**stored, "kind": "ab-test"}).finishes_by_itself is False
    with pytest.raises(ValueError, match="unknown rollout kind 'blue-green'"):
        Rollout.from_dict({**stored, "kind": "blue-green"})
    with pytest.raises(ValueError, match="already registered"):
        register(Canary)


def test_require_strategy_names_the_strategies() -> None:
    """Anything but a strategy is a TypeError listing the four."""
    assert require_strategy(BlueGreen()) == BlueGreen()
    with pytest.raises(TypeError, match="strategy must be BlueGreen, Canary, ABTest or Scheduled, got 'canary'"):
        require_strategy("canary")


@pytest.mark.parametrize(
    ("kind", "given", "expected"),
    [
        (None, set(), BlueGreen),
        (None, {"stages"}, Canary),
        (None, {"test_duration"}, ABTest),
        (None, {"at"}, Scheduled),
        (None, {"at", "stages"}, Scheduled),
        ("canary", set(), Canary),
    ],
)
def test_strategy_for_cli_picks_the_named_or_implied_kind(kind: str | None, given: set[str], expected: type) -> None:
    """--strategy wins; otherwise the options imply it (scheduled first, then canary, then A/B)."""
    if expected is Scheduled and "stages" in given:
        with pytest.raises(
            InvalidStrategyError, match=r"^--stages/--stage-duration do\(es\) not apply to --strategy scheduled$"
        ):
            strategy_for_cli(kind, given)
        return
    assert strategy_for_cli(kind, given) is expected


def test_strategy_for_cli_refuses_options_of_other_strategies() -> None:
    """Options of another strategy are named in the order of the CLI's help."""
    with pytest.raises(
        InvalidStrategyError, match=r"^--stages/--stage-duration, --at do\(es\) not apply to --strategy ab-test$"
    ):
        strategy_for_cli("ab-test", {"stage_duration", "at", "split_ratio"})
    assert Canary.from_options(stages=(50, 100), stage_duration=None) == Canary((50, 100))
    assert ABTest.from_options(split_ratio=None, test_duration=5.0) == ABTest(0.5, 5.0)
    with pytest.raises(InvalidStrategyError, match="--strategy scheduled needs --at TIME"):
        Scheduled.from_options(at=None)
