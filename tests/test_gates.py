"""Gates: the controller asks a registered gate before each automatic step; 2xx goes ahead, else it holds.

Gate webhooks are asked over HTTP on loopback (tests/_support_http.py). freezegun drives the
manager's clock; the gate's timeout is a real wait, bounded, and never asserted as a duration.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from rule_engine import Canary, DeploymentManager, HealthThresholds, Scheduled
from rule_engine.deployment.gating import GateAnswer, GateQuestion
from rule_engine.observability.gates import Gates, ask_timeout, install_gates
from rule_engine.observability.views import status_view
from rule_engine.observability.webhooks import Webhook
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2
from tests._support_http import Receiver, Reply

START = "2026-01-05 12:00:00"


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


def gate(url: str, **fields: object) -> Webhook:
    return Webhook.model_validate({"name": "load-test", "type": "gate", "url": url, "timeout_secs": 2, **fields})


def healthy_canary(stages: tuple[float, ...] = (10, 50, 100)) -> DeploymentManager:
    """v1 active, v2 a canary at stage 1 of ``stages`` (60 s each) with a healthy verdict."""
    manager = DeploymentManager(thresholds=HealthThresholds(min_evaluations=10), auto_rollback=True)
    manager.activate_deployment(manager.prepare_deployment(GATEWAY_V1, deployed_by="setup"), actor="setup")
    manager.activate_deployment(manager.prepare_deployment(GATEWAY_V2, Canary(stages, 60)), actor="setup")
    feed_health(manager)
    return manager


def feed_health(manager: DeploymentManager, errors: int = 0) -> None:
    status = manager.get_rollout_status()
    assert status is not None
    manager.update_health_metrics(status.stable_version_id, 100)
    manager.update_health_metrics(status.version_id, 100, errors=errors)


def stage_of(manager: DeploymentManager) -> int:
    status = manager.get_rollout_status()
    assert status is not None
    return status.stage


def holding(manager: DeploymentManager) -> str:
    status = manager.get_rollout_status()
    assert status is not None
    assert status.holding is not None
    return status.holding


def test_a_gate_answering_2xx_lets_the_stage_go(clock: FrozenDateTimeFactory) -> None:
    """When the stage is due, the gate is asked (the question in the body); 200 advances it."""
    with Receiver(Reply(200)) as receiver:
        manager = healthy_canary()
        assert install_gates(manager, [gate(receiver.url)])
        manager.tick()
        assert receiver.received == []  # not due yet: not asked
        clock.tick(61)
        report = manager.tick()
        (asked,) = receiver.received
    assert report.actions == (f"advanced {json.loads(asked.body)['version_id']}",)
    assert stage_of(manager) == 2
    body = json.loads(asked.body)
    assert {k: body[k] for k in ("event", "step", "stage", "stages", "percentage", "next_percentage")} == {
        "event": "gate",
        "step": "stage",
        "stage": 1,
        "stages": [10, 50, 100],
        "percentage": 10.0,
        "next_percentage": 50.0,
    }


@pytest.mark.parametrize("status", [400, 409, 500, 503])
def test_a_gate_answering_anything_else_holds_with_its_reply_as_the_reason(
    clock: FrozenDateTimeFactory, status: int
) -> None:
    """A non-2xx answer holds the stage; the reply is the hold reason in status, its JSON and the tick report."""
    with Receiver(Reply(status, b"load test:\n p99 too high")) as receiver:
        manager = healthy_canary()
        install_gates(manager, [gate(receiver.url)])
        clock.tick(61)
        report = manager.tick()
        report_again = manager.tick()
        assert len(receiver.received) == 2  # asked again on the next tick
    assert stage_of(manager) == 1
    reason = f"gate load-test (HTTP {status}): load test: p99 too high"
    assert holding(manager) == reason
    assert status_view(manager, "memory://")["rollout"]["holding"] == reason
    candidate = manager.get_rollout_status().version_id  # type: ignore[union-attr]
    assert report.holding == report_again.holding == (f"{candidate}: {reason}",)


def test_a_slow_gate_holds_without_blocking_the_tick_past_its_timeout(clock: FrozenDateTimeFactory) -> None:
    """The tick returns while the gate still has not answered; the next tick does not ask it twice."""
    release = threading.Event()
    with Receiver(Reply(200, block=release)) as receiver:
        manager = healthy_canary()
        manager.set_gate(Gates([gate(receiver.url, timeout_secs=10)]), timeout_secs=0.2)
        clock.tick(61)
        try:
            first = manager.tick()
            assert not release.is_set()  # the tick returned although the gate is still answering
            assert len(receiver.wait_for(1)) == 1
            second = manager.tick()
            assert len(receiver.received) == 1  # one ask in flight at most
        finally:
            release.set()
    assert stage_of(manager) == 1
    assert "has not answered within 0.2 s" in first.holding[0]
    assert "still waiting for its answer" in second.holding[0]


def test_an_unreachable_gate_holds(clock: FrozenDateTimeFactory) -> None:
    """A refused connection is a hold too, never a step by default."""
    with Receiver() as receiver:
        url = receiver.url
    manager = healthy_canary()
    install_gates(manager, [gate(url)])
    clock.tick(61)
    manager.tick()
    assert stage_of(manager) == 1
    assert holding(manager).startswith("gate load-test (unreachable)")


def test_a_gate_that_recovers_lets_the_stage_advance_on_the_next_tick(clock: FrozenDateTimeFactory) -> None:
    """503, then 200: held once, advanced at the next tick, and the hold reason is gone."""
    with Receiver(Reply(503, b"not yet"), Reply(200)) as receiver:
        manager = healthy_canary()
        install_gates(manager, [gate(receiver.url)])
        clock.tick(61)
        manager.tick()
        assert (stage_of(manager), holding(manager)) == (1, "gate load-test (HTTP 503): not yet")
        clock.tick(1)
        manager.tick()
        assert len(receiver.received) == 2
    assert stage_of(manager) == 2
    assert holding(manager).startswith("stage lasts until")


def test_a_promotion_gate_is_asked_only_for_the_step_to_100(clock: FrozenDateTimeFactory) -> None:
    """step='promotion' leaves earlier stages alone and holds the last step."""
    with Receiver(Reply(409, b"waiting for sign-off")) as receiver:
        manager = healthy_canary()
        install_gates(manager, [gate(receiver.url, step="promotion")])
        clock.tick(61)
        manager.tick()
        assert stage_of(manager) == 2
        assert receiver.received == []
        feed_health(manager)
        clock.tick(61)
        manager.tick()
        (asked,) = receiver.received
    assert (json.loads(asked.body)["step"], json.loads(asked.body)["next_percentage"]) == ("promotion", 100.0)
    assert stage_of(manager) == 2
    assert "sign-off" in holding(manager)


def test_a_scheduled_activation_waits_for_the_gate(clock: FrozenDateTimeFactory) -> None:
    """The switch of a scheduled version is gated: refused at its time, done at the tick after the gate agrees."""
    with Receiver(Reply(503, b"change freeze"), Reply(204)) as receiver:
        manager = DeploymentManager()
        v1 = manager.prepare_deployment(GATEWAY_V1)
        manager.activate_deployment(v1)
        v2 = manager.prepare_deployment(GATEWAY_V2, Scheduled(1_767_614_400 + 600))
        install_gates(manager, [gate(receiver.url, step="activation")])
        clock.tick(601)
        report = manager.tick()
        assert manager.get_active_version_id() == v1
        assert report.holding == (f"{v2}: scheduled, held by the gate: gate load-test (HTTP 503): change freeze",)
        assert manager.tick().actions == (f"activated scheduled {v2}",)
        first = json.loads(receiver.received[0].body)
    assert manager.get_active_version_id() == v2
    assert (first["step"], first["version_id"], first["stable_version_id"]) == ("activation", v2, v1)


def test_a_person_is_not_gated_and_a_gate_never_shields_an_unhealthy_canary(clock: FrozenDateTimeFactory) -> None:
    """advance/promote by a person go ahead; an unhealthy candidate is rolled back while the gate holds."""
    with Receiver(Reply(503)) as receiver:
        manager = healthy_canary()
        install_gates(manager, [gate(receiver.url)])
        clock.tick(61)
        manager.tick()
        assert manager.advance_rollout(actor="bob")
        assert stage_of(manager) == 2
        feed_health(manager, errors=90)
        manager.tick()
    assert manager.get_rollout_status() is None
    assert (manager.audit_log()[-1].action, manager.audit_log()[-1].actor) == ("rollback", "controller")


class PythonGate:
    """A gate in Python: records questions, answers from a script, may raise."""

    def __init__(self, *answers: GateAnswer | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[GateQuestion] = []

    def ask(self, question: GateQuestion) -> Any:
        self.asked.append(question)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_raising_gate_holds_and_a_removed_gate_no_longer_asks(clock: FrozenDateTimeFactory) -> None:
    """A gate that raises holds with the error; set_gate(None) lets the stage go."""
    manager = healthy_canary()
    broken = PythonGate(RuntimeError("boom"))
    manager.set_gate(broken)
    clock.tick(61)
    manager.tick()
    assert holding(manager) == "the gate failed: RuntimeError: boom"
    manager.set_gate(None)
    manager.tick()
    assert stage_of(manager) == 2
    assert len(broken.asked) == 1


def test_a_gate_is_asked_about_the_stage_it_allows_only(clock: FrozenDateTimeFactory) -> None:
    """An allowed step commits only if the rollout is still at the stage the gate was asked about."""
    manager = healthy_canary()
    seen: list[int] = []

    class Racing:
        def ask(self, question: GateQuestion) -> GateAnswer:
            seen.append(question.stage)
            if len(seen) == 1:
                assert manager.advance_rollout(actor="bob")  # someone else moves the stage meanwhile
            return GateAnswer(True)

    manager.set_gate(Racing())
    clock.tick(61)
    manager.tick()
    assert stage_of(manager) == 2  # advanced once (by bob), not twice
    assert [e.actor for e in manager.audit_log() if e.action == "advance"] == ["bob"]


def test_a_step_that_falls_due_during_the_tick_is_not_taken_unasked(
    clock: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not yet due when the gate would be asked, due by the time the step is planned: it waits, unasked.

    The two-controller test once saw three stages advance on two allowing answers under load: the
    step fell due between the controller's reading (no ask: not due) and the plan's (due: advanced).
    """
    manager = healthy_canary()
    allowing = PythonGate(GateAnswer(True))
    manager.set_gate(allowing)
    clock.tick(59.999)
    real = Canary.step_is_over
    readings: list[bool] = []

    def falls_due_on_the_second_reading(self: Canary, now: float, started_at: float, stage_started_at: float) -> bool:
        readings.append(bool(readings))  # False at the controller's reading, True at every later one
        return readings[-1] or real(self, now, started_at, stage_started_at)

    monkeypatch.setattr(Canary, "step_is_over", falls_due_on_the_second_reading)
    manager.tick()
    assert stage_of(manager) == 1  # not taken: the gate was never asked about it
    assert allowing.asked == []
    monkeypatch.setattr(Canary, "step_is_over", real)
    clock.tick(1)
    manager.tick()  # the next tick asks, and the gate allows it
    assert stage_of(manager) == 2
    assert [q.stage for q in allowing.asked] == [1]


@pytest.mark.parametrize("timeout", [0, -1, 61, math.nan, math.inf])
def test_a_gate_timeout_is_bounded(timeout: float) -> None:
    """The wait per ask is (0, 60] seconds."""
    with pytest.raises(ValueError, match="gate timeout"):
        DeploymentManager().set_gate(PythonGate(GateAnswer(True)), timeout_secs=timeout)


def test_the_ask_timeout_covers_every_gate_in_turn_up_to_60_s() -> None:
    """serve and controller wait for all gates of a step: the sum of their timeouts, at most 60 s."""
    url = "http://127.0.0.1:9/"
    assert ask_timeout(Gates([gate(url, name="a", timeout_secs=2), gate(url, name="b", timeout_secs=3)])) == 5
    assert ask_timeout(Gates([gate(url, name=f"g{i}", timeout_secs=40) for i in range(3)])) == 60
    assert install_gates(DeploymentManager(), [Webhook(name="chat", url=url)]) is False


# --- two controller processes -----------------------------------------------------------------------

SCRIPT = Path(sys.executable).with_name("rule-engine")
PROCESS_SECS = 60.0  # every wait on the processes is bounded


def test_two_gated_controller_processes_take_each_step_once(tmp_path: Path) -> None:
    """`rule-engine controller --webhooks FILE` twice at once: the gate holds, then each stage happens once."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with DeploymentManager.open(url, follow=False) as manager:
        v1 = manager.prepare_deployment(GATEWAY_V1)
        manager.activate_deployment(v1)
        v2 = manager.prepare_deployment(GATEWAY_V2, Canary((10, 25, 50, 100), 0.3))
        manager.activate_deployment(v2)
    with Receiver(*[Reply(503, b"warming up")] * 4, Reply(200)) as receiver:
        hooks = tmp_path / "webhooks.json"
        hooks.write_text(json.dumps({"webhooks": [{"name": "load-test", "type": "gate", "url": receiver.url}]}))
        command = [str(SCRIPT), "--store", url, "controller", "--webhooks", str(hooks), "--interval", "0.05"]
        command += ["--min-evaluations", "0", "--json"]
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
        try:
            store = SQLiteStore(tmp_path / "state.db")
            deadline = time.monotonic() + PROCESS_SECS
            while store.load().active != v2:  # bounded: the canary finishes within PROCESS_SECS or the test fails
                assert time.monotonic() < deadline, "the gated canary did not finish"
                assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
                time.sleep(0.05)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            outputs = [proc.communicate(timeout=PROCESS_SECS) for proc in procs]
        asked = len(receiver.received)
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outputs]
    reports = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
    assert any("gate load-test (HTTP 503): warming up" in h for r in reports for h in r["holding"])
    actions = sorted(a for r in reports for a in r["actions"])
    assert actions == [f"advanced {v2}"] * 3
    steps = [(e.version_id, e.to_state) for e in store.audit_log() if e.action == "advance"]
    assert steps == [(v2, "rolling_out"), (v2, "rolling_out"), (v2, "active"), (v1, "superseded")]
    assert asked >= 4 + 3  # the refusals, then at least one allowing answer per step
    store.close()
