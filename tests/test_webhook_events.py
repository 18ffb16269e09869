"""Notification webhooks for every rollout event: holds (by cause), pauses, resumes, the fleet lagging.

Each event type is delivered once (not once per tick), signed with HMAC-SHA256, retried with backoff
from the background queue, and never blocks the tick. freezegun drives the manager's time; the
webhook queue keeps the real clock (its backoff is real, bounded waiting).
"""

from __future__ import annotations

import json
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
from rule_engine.observability.webhooks import Notifier, Webhook, sign
from rule_engine.testing import ManualClock
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2
from tests._support_http import Received, Receiver, Reply

SECRET = "events-secret-for-tests"
IDLE_SECS = 20.0
START = "2026-01-05 12:00:00"


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTS_SECRET", SECRET)


@pytest.fixture
def clock() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START, ignore=["rule_engine.observability.webhooks"]) as frozen:
        yield frozen


def hook(url: str, **fields: object) -> Webhook:
    return Webhook.model_validate({"name": "chat", "url": url, "secret_env": "EVENTS_SECRET", **fields})


def notifier_for(url: str, **fields: object) -> Notifier:
    return Notifier([hook(url, **fields)], backoff_base=0.01, backoff_cap=0.05)


def bodies(receiver: Receiver) -> list[dict[str, Any]]:
    """Every delivery's body, after checking its signature."""
    return [verified(r) for r in receiver.received]


def verified(got: Received) -> dict[str, Any]:
    assert got.headers["X-Rule-Engine-Signature-256"] == sign(SECRET.encode(), got.body)
    body: dict[str, Any] = json.loads(got.body)
    assert got.headers["X-Rule-Engine-Event"] == body["event"]
    return body


def feed_health(manager: DeploymentManager) -> None:
    status = manager.get_rollout_status()
    assert status is not None
    manager.update_health_metrics(status.stable_version_id, 100)
    manager.update_health_metrics(status.version_id, 100)


def new_manager() -> DeploymentManager:
    manager = DeploymentManager(thresholds=HealthThresholds(min_evaluations=10))
    manager.activate_deployment(manager.prepare_deployment(GATEWAY_V1, deployed_by="setup"), actor="setup")
    return manager


def test_every_rollout_event_is_told_once_and_signed(clock: FrozenDateTimeFactory) -> None:
    """started, held (no verdict), paused, resumed, advanced, completed, rolled back: once each, over many ticks."""
    with Receiver() as receiver:
        manager = new_manager()
        notifier = notifier_for(receiver.url).attach(manager)
        try:
            v2 = manager.prepare_deployment(GATEWAY_V2, Canary((10, 50, 100), 60))
            manager.activate_deployment(v2, actor="alice")
            for _ in range(3):
                manager.tick()  # no verdict yet: held, told once
            feed_health(manager)
            manager.tick()
            manager.pause_rollout(actor="bob", reason="investigating")
            manager.tick()
            manager.tick()  # the controller sees the pause too: not told twice
            manager.resume_rollout(actor="bob")
            manager.tick()
            clock.tick(61)
            feed_health(manager)
            manager.tick()
            manager.tick()
            manager.promote(actor="bob")
            v3 = manager.prepare_deployment(GATEWAY_V1, Canary((10, 100), 60))
            manager.activate_deployment(v3, actor="alice")
            manager.rollback(actor="bob", reason="latency")
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
        events = bodies(receiver)
    assert [e["event"] for e in events] == [
        "rollout.started",
        "rollout.held",
        "rollout.paused",
        "rollout.resumed",
        "rollout.advanced",
        "rollout.completed",
        "rollout.started",
        "rollout.rolled_back",
    ]
    held, paused, resumed = events[1], events[2], events[3]
    assert (held["version_id"], held["cause"], held["actor"]) == (v2, "health", "controller")
    assert "evaluations" in held["reason"]  # the verdict's own words: too little traffic
    assert (paused["version_id"], paused["actor"], paused["reason"]) == (v2, "bob", "investigating")
    assert (resumed["version_id"], resumed["actor"]) == (v2, "bob")
    assert (events[-1]["version_id"], events[-1]["cause"], events[-1]["reason"]) == (v3, "manual", "latency")


def test_a_pause_by_another_process_is_told_once_by_the_controller(tmp_path: Path) -> None:
    """A pause committed elsewhere is seen by this process's tick: paused, then resumed, once each."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    clock = ManualClock(time.time())
    with Receiver() as receiver:
        here = DeploymentManager.open(url, follow=False, clock=clock, thresholds=HealthThresholds(min_evaluations=10))
        other = DeploymentManager.open(url, follow=False, clock=clock)
        notifier = notifier_for(receiver.url).attach(here)
        try:
            here.activate_deployment(here.prepare_deployment(GATEWAY_V1))
            v2 = here.prepare_deployment(GATEWAY_V2, Canary((10, 100), 60))
            here.activate_deployment(v2)
            feed_health(here)
            other.refresh()
            other.pause_rollout(actor="carol")
            here.refresh()
            here.tick()
            here.tick()
            other.resume_rollout(actor="carol")
            here.refresh()
            here.tick()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
            here.close()
            other.close()
        events = [(e["event"], e.get("cause")) for e in bodies(receiver)]
    assert events == [
        ("deployment.activated", None),
        ("rollout.started", None),
        ("rollout.paused", None),
        ("rollout.resumed", None),
    ]


def test_a_progress_deadline_is_a_hold_of_its_own(clock: FrozenDateTimeFactory) -> None:
    """No verdict: held (health); past the progress deadline: held again, cause progress_deadline."""
    with Receiver() as receiver:
        manager = new_manager()
        notifier = notifier_for(receiver.url, events=["rollout.held"]).attach(manager)
        try:
            manager.activate_deployment(
                manager.prepare_deployment(GATEWAY_V2, Canary((10, 100), 60)), progress_deadline=30
            )
            manager.tick()
            clock.tick(31)
            manager.tick()
            manager.tick()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
        held = bodies(receiver)
    assert [e["cause"] for e in held] == ["health", "progress_deadline"]
    assert "progress deadline of 30s exceeded" in held[1]["reason"]


class Refusing:
    REPLY = "gate load-test (HTTP 503): p99 too high"

    def ask(self, question: GateQuestion) -> GateAnswer:
        return GateAnswer(False, self.REPLY)


def test_a_gate_refusal_is_told_once_with_the_gate_reply(clock: FrozenDateTimeFactory) -> None:
    """Three refusing ticks: one rollout.held, cause gate, the reply as reason."""
    with Receiver() as receiver:
        manager = new_manager()
        notifier = notifier_for(receiver.url, events=["rollout.held"]).attach(manager)
        try:
            manager.activate_deployment(manager.prepare_deployment(GATEWAY_V2, Canary((10, 100), 60)))
            feed_health(manager)
            manager.set_gate(Refusing())
            clock.tick(61)
            for _ in range(3):
                manager.tick()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
        (held,) = bodies(receiver)
    assert (held["cause"], held["reason"]) == ("gate", "gate load-test (HTTP 503): p99 too high")


def test_a_lagging_fleet_is_told_as_a_hold_and_as_fleet_lagging(tmp_path: Path) -> None:
    """An instance that does not serve the stage holds it: rollout.held (cause fleet) and fleet.lagging, once."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    clock = ManualClock(time.time())
    with Receiver() as receiver:
        first = DeploymentManager.open(url, follow=False, clock=clock)
        first.activate_deployment(first.prepare_deployment(GATEWAY_V1))
        lagging = DeploymentManager.open(url, follow=False, clock=clock)
        notifier = notifier_for(receiver.url, events=["rollout.held", "fleet.lagging"]).attach(first)
        try:
            for manager in (first, lagging):
                manager.fleet.beat()
            first.activate_deployment(first.prepare_deployment(GATEWAY_V2, Canary((10, 100), 60)))
            first.fleet.beat()
            for _ in range(3):
                first.tick()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
            lagging.close()
            first.close()
        events = bodies(receiver)
    assert [(e["event"], e["cause"]) for e in events] == [("rollout.held", "fleet"), ("fleet.lagging", "fleet")]
    assert "waiting for 1 of 2 instances" in events[1]["reason"]


def test_a_failing_receiver_is_retried_and_a_slow_one_never_blocks_the_tick(clock: FrozenDateTimeFactory) -> None:
    """The held event: 500, 500, then 200 (delivered on attempt 3); a blocked receiver does not hold up tick()."""
    release = threading.Event()
    with (
        Receiver(Reply(500, b"down"), Reply(500, b"down"), Reply(200)) as failing,
        Receiver(Reply(200, block=release)) as slow,
    ):
        manager = new_manager()
        notifier = Notifier(
            [hook(failing.url, events=["rollout.held"]), hook(slow.url, name="slow", events=["rollout.started"])],
            backoff_base=0.01,
            backoff_cap=0.05,
        ).attach(manager)
        try:
            manager.activate_deployment(manager.prepare_deployment(GATEWAY_V2, Canary((10, 100), 60)))
            slow.wait_for(1)  # the worker is inside the slow delivery
            report = manager.tick()  # returns while the worker is still blocked
            assert not release.is_set()
            assert report.holding
            release.set()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            release.set()
            notifier.close()
        assert len(failing.received) == 3
    records = {d["webhook"]: d for d in notifier.deliveries()}
    assert (records["chat"]["event"], records["chat"]["outcome"], records["chat"]["attempts"]) == (
        "rollout.held",
        "delivered",
        3,
    )
    assert notifier.delivery_counts()[("chat", "retried")] == 2


def test_a_scheduled_activation_held_by_a_gate_is_told_once(clock: FrozenDateTimeFactory) -> None:
    """Refused at its time over three ticks: one rollout.held (cause gate) for the scheduled version."""
    with Receiver() as receiver:
        manager = new_manager()
        notifier = notifier_for(receiver.url, events=["rollout.held"]).attach(manager)
        try:
            later = manager.prepare_deployment(GATEWAY_V2, Scheduled(time.time() + 60))
            manager.set_gate(Refusing())
            clock.tick(61)
            for _ in range(3):
                manager.tick()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
        (held,) = bodies(receiver)
    assert (held["version_id"], held["cause"], held["reason"]) == (later, "gate", Refusing.REPLY)
