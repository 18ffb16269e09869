"""The public testing kit: the manual clock drives a manager, the builders make bundles it accepts."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from rule_engine import BundleValidationError, Canary, DeploymentManager, RuleEngine
from rule_engine.testing import ManualClock, bundle, rule


def test_manual_clock_moves_only_when_told() -> None:
    """now() stands still; advance() moves forward; set() jumps anywhere, also from an aware datetime."""
    clock = ManualClock(1000.0)
    assert clock.now() == clock.now() == 1000.0
    assert clock.advance(2.5) == 1002.5
    assert clock.now() == 1002.5
    clock.set(10.0)
    assert clock.now() == 10.0
    clock.set(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.now() == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("secs", [-1, math.nan, math.inf, True, "1"])
def test_manual_clock_refuses_to_go_back_or_nowhere(secs: object) -> None:
    """advance() takes finite seconds >= 0 only; the time is unchanged after a refusal."""
    clock = ManualClock(5.0)
    with pytest.raises(ValueError, match="advance"):
        clock.advance(secs)  # type: ignore[arg-type]
    assert clock.now() == 5.0


def test_manual_clock_refuses_naive_datetimes_and_infinity() -> None:
    """A naive datetime or an infinite time is not a time a clock can read."""
    with pytest.raises(ValueError, match="no timezone"):
        ManualClock(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="finite"):
        ManualClock().set(math.inf)


def test_a_manual_clock_drives_a_canary_stage() -> None:
    """A manager on a ManualClock advances a canary only once the clock has passed the stage duration."""
    clock = ManualClock()
    manager = DeploymentManager(clock=clock)
    manager.activate_deployment(manager.prepare_deployment(bundle(version="1")))
    candidate = manager.prepare_deployment(bundle(version="2"), Canary((50, 100), 60))
    manager.activate_deployment(candidate)
    clock.advance(59)
    assert not manager.advance_rollout()
    clock.advance(1)
    assert manager.advance_rollout()
    assert manager.get_active_version_id() == candidate


def test_builders_make_bundles_that_serve_as_written() -> None:
    """bundle(rules=[rule(...)]) is accepted, and its rules decide as built; its tests run at prepare."""
    document = bundle(
        [rule("big", field="amount", op="gt", value=100, decision="review", priority=5), rule()],
        bundle_id="shop",
        version="2.0.0",
        on_error="deny",
        tests=[{"name": "big-reviewed", "event": {"amount": 500}, "expect": {"decision": "review"}}],
    )
    manager = DeploymentManager()
    version = manager.prepare_deployment(document)
    manager.activate_deployment(version)
    assert version.startswith("shop@2.0.0+")
    engine = RuleEngine(manager)
    assert engine.evaluate({"amount": 500}).decision == "review"
    assert engine.evaluate({"x": 1}).decision == "deny"
    assert engine.evaluate({"x": 2}).decision == "allow"
    assert engine.evaluate({"amount": "lots"}).decision == "deny"  # on_error


def test_builders_can_build_an_invalid_bundle_on_purpose() -> None:
    """The builders do not validate: a bundle with a failing test is refused by prepare, naming the test."""
    failing = bundle(tests=[{"name": "wrong", "event": {"x": 1}, "expect": {"decision": "allow"}}])
    with pytest.raises(BundleValidationError, match="wrong"):
        DeploymentManager().prepare_deployment(failing)
