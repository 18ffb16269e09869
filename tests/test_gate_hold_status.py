"""A gate's hold is stored with the rollout: every process's status shows it, committed once per hold.

Two managers on one SQLite store: the first ticks (and asks the gate), the second never ticks and
only reads (what `rule-engine status --json` or a `serve` without `--controller` does). freezegun
drives the stage clock; no sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from rule_engine import Canary, DeploymentManager, HealthThresholds
from rule_engine.control.gate_holds import gate_hold_reason
from rule_engine.control.records import GateHold, Rollout
from rule_engine.deployment.gating import GateAnswer, GateQuestion
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2


class ScriptedGate:
    """Answers from a script (the last answer repeats)."""

    def __init__(self, *answers: GateAnswer) -> None:
        self.answers = list(answers)

    def ask(self, question: GateQuestion) -> GateAnswer:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[tuple[DeploymentManager, DeploymentManager, FrozenDateTimeFactory]]:
    """(ticking, reading, clock): v1 active, v2 a canary (10, 50, 100; 60 s each) healthy from the start."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    thresholds = HealthThresholds(min_evaluations=0)
    with freeze_time("2026-01-05 12:00:00") as clock:
        ticking = DeploymentManager.open(url, follow=False, thresholds=thresholds)
        reading = DeploymentManager.open(url, follow=False, thresholds=thresholds)
        try:
            ticking.activate_deployment(ticking.prepare_deployment(GATEWAY_V1))
            ticking.activate_deployment(ticking.prepare_deployment(GATEWAY_V2, Canary((10, 50, 100), 60)))
            yield ticking, reading, clock
        finally:
            ticking.close()
            reading.close()


def read_status(manager: DeploymentManager) -> dict[str, Any]:
    manager.refresh()
    status = manager.get_rollout_status()
    assert status is not None
    return status.to_dict()


def revision(manager: DeploymentManager) -> int:
    return manager.store.load().revision


def test_a_process_that_never_ticks_sees_the_gate_hold_until_the_stage_advances(managers: Any) -> None:
    ticking, reading, clock = managers
    ticking.set_gate(ScriptedGate(GateAnswer(False, "load test: p99 too high"), GateAnswer(True)))
    clock.tick(61)
    ticking.tick()
    status = read_status(reading)
    assert (status["stage"], status["holding"]) == (1, "load test: p99 too high")
    clock.tick(1)
    ticking.tick()  # the gate allows: the stage advances and the hold is gone, for every process
    status = read_status(reading)
    assert status["stage"] == 2
    assert status["holding"].startswith("stage lasts until")
    rollout = ticking.store.load().rollout
    assert rollout is not None
    assert rollout.gate_hold is None


def test_the_hold_is_committed_once_not_per_tick_and_again_when_its_reason_changes(managers: Any) -> None:
    ticking, reading, clock = managers
    gate = ScriptedGate(*[GateAnswer(False, "change freeze")] * 4, GateAnswer(False, "change freeze until 14:00"))
    ticking.set_gate(gate)
    clock.tick(61)
    before = revision(ticking)
    ticking.tick()
    held = revision(ticking)
    assert held == before + 1
    for _ in range(3):
        clock.tick(1)
        ticking.tick()
    assert revision(ticking) == held  # same reason: no commit per tick
    assert ticking.store.audit_log()[-1].action != "gate-hold"  # the hold is not an operation: no audit entry
    clock.tick(1)
    ticking.tick()
    assert revision(ticking) == held + 1
    assert read_status(reading)["holding"] == "change freeze until 14:00"


def test_two_controllers_held_by_the_same_reply_commit_the_hold_once(managers: Any) -> None:
    first, second, clock = managers
    for manager in (first, second):
        manager.set_gate(ScriptedGate(GateAnswer(False, "not yet")))
    clock.tick(61)
    before = revision(first)
    first.tick()
    second.tick()  # loses the race: finds the hold stored already
    assert revision(first) == before + 1
    assert read_status(second)["holding"] == read_status(first)["holding"] == "not yet"


def test_a_stored_hold_round_trips_and_a_damaged_one_is_refused() -> None:
    rollout = Rollout("canary", "v2", "v1", 1000, 0, 0.0, 0.0, "salt")
    assert "gate_hold" not in rollout.to_dict()
    held = replace(rollout, gate_hold=GateHold(0, "wait"))
    assert Rollout.from_dict(held.to_dict()) == held
    long = Rollout.from_dict({**held.to_dict(), "gate_hold": {"stage_index": 0, "reason": "x" * 1000}})
    assert long.gate_hold == GateHold(0, "x" * 300)
    for damaged in ({"stage_index": "0", "reason": "r"}, {"stage_index": -1, "reason": "r"}, {"stage_index": 0}, []):
        with pytest.raises(ValueError, match="gate hold"):
            Rollout.from_dict({**held.to_dict(), "gate_hold": damaged})


def test_a_hold_naming_another_stage_is_ignored() -> None:
    rollout = Rollout("canary", "v2", "v1", 5000, 1, 0.0, 0.0, "salt", gate_hold=GateHold(0, "old"))
    assert gate_hold_reason(rollout) is None
    assert gate_hold_reason(replace(rollout, stage_index=0)) == "old"
