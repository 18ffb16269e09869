"""Webhooks (signed, retried from a queue that never blocks) and gates (2xx goes ahead, else holds)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from rule_engine import DeploymentManager
from rule_engine.observability.metrics import register
from rule_engine.observability.webhooks import Notifier, Webhook, WebhookConfigError, load_webhooks, sign
from tests._support_deployment import GATEWAY_V1
from tests._support_http import Receiver, Reply
from tests._support_server import ManualClock, canary_in_progress

SECRET = "s3cret-for-tests"
IDLE_SECS = 20.0  # every wait is bounded


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)


def hook(url: str, **fields: object) -> Webhook:
    return Webhook.model_validate(
        {"name": "chat", "url": url, "secret_env": "HOOK_SECRET", "timeout_secs": 2, **fields}
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def notifier_for(*hooks: Webhook, **options: object) -> Notifier:
    chosen: dict[str, object] = {"backoff_base": 0.01, "backoff_cap": 0.05, **options}
    return Notifier(hooks, **chosen)  # type: ignore[arg-type]


def deliver_one_deploy(manager: DeploymentManager, *hooks: Webhook) -> Notifier:
    """Attach a notifier, deploy v1 as alice, wait (bounded) until every delivery is done, close it."""
    notifier = notifier_for(*hooks).attach(manager)
    try:
        manager.activate_deployment(manager.prepare_deployment(GATEWAY_V1, deployed_by="alice"), actor="alice")
        assert notifier.wait_idle(IDLE_SECS)
    finally:
        notifier.close()
    return notifier


@pytest.fixture
def manager(clock: ManualClock) -> Iterator[DeploymentManager]:
    with DeploymentManager(clock=clock) as m:
        yield m


# --- notifications ----------------------------------------------------------------------------------


def test_events_are_delivered_with_an_hmac_signature(manager: DeploymentManager) -> None:
    """A deploy posts deployment.activated; the signature header is the HMAC-SHA256 of the exact body."""
    with Receiver() as receiver:
        notifier = deliver_one_deploy(manager, hook(receiver.url))
        (got,) = receiver.received
    body = json.loads(got.body)
    assert (body["event"], body["actor"], got.headers["X-Rule-Engine-Event"]) == (
        "deployment.activated",
        "alice",
        "deployment.activated",
    )
    assert got.headers["X-Rule-Engine-Signature-256"] == sign(SECRET.encode(), got.body)
    assert got.headers["X-Rule-Engine-Delivery"] == body["delivery_id"]
    assert notifier.deliveries()[-1]["outcome"] == "delivered"


def test_a_canary_tells_started_advanced_and_rolled_back_with_cause(clock: ManualClock) -> None:
    """Each rollout step is an event; a rollback names its cause."""
    with Receiver() as receiver:
        notifier = notifier_for(hook(receiver.url))
        manager = canary_in_progress(clock)
        notifier.attach(manager)
        try:
            clock.advance(61)
            manager.advance_rollout(actor="bob")
            manager.rollback(actor="bob", reason="latency")
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
        events = [json.loads(r.body) for r in receiver.received]
    assert [e["event"] for e in events] == ["rollout.advanced", "rollout.rolled_back"]
    assert (events[1]["cause"], events[1]["reason"]) == ("manual", "latency")
    assert events[0]["serving_after"]["candidate_percentage"] == 50.0


def test_only_the_events_a_webhook_asks_for_are_sent(clock: ManualClock) -> None:
    """events=[...] filters what one webhook is told."""
    with Receiver() as receiver:
        notifier = notifier_for(hook(receiver.url, events=["rollout.rolled_back"]))
        manager = canary_in_progress(clock)
        notifier.attach(manager)
        try:
            clock.advance(61)
            manager.advance_rollout(actor="bob")
            manager.rollback(actor="bob")
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            notifier.close()
        assert [json.loads(r.body)["event"] for r in receiver.received] == ["rollout.rolled_back"]


def test_a_failing_receiver_is_retried_until_it_answers(manager: DeploymentManager) -> None:
    """500, 500, then 200: three attempts, delivered, two retries counted."""
    with Receiver(Reply(500, b"down"), Reply(500, b"down"), Reply(200)) as receiver:
        notifier = deliver_one_deploy(manager, hook(receiver.url))
        assert len(receiver.received) == 3
    (record,) = notifier.deliveries()
    assert (record["outcome"], record["attempts"]) == ("delivered", 3)
    assert notifier.delivery_counts() == {("chat", "retried"): 2, ("chat", "delivered"): 1}


def test_a_receiver_that_never_answers_2xx_fails_after_max_attempts(manager: DeploymentManager) -> None:
    """After max_attempts the delivery is failed, with the last status as detail."""
    with Receiver(Reply(404, b"no such hook")) as receiver:
        notifier = deliver_one_deploy(manager, hook(receiver.url, max_attempts=3))
        assert len(receiver.received) == 3
    (record,) = notifier.deliveries()
    assert (record["outcome"], record["detail"]) == ("failed", "HTTP 404")


def test_an_unreachable_receiver_fails_without_raising(manager: DeploymentManager) -> None:
    """A closed port is a failed delivery, never an error in the operation."""
    with Receiver() as receiver:
        url = receiver.url
    notifier = deliver_one_deploy(manager, hook(url, max_attempts=2))
    assert notifier.deliveries()[0]["outcome"] == "failed"


def test_a_slow_receiver_never_blocks_the_control_loop(clock: ManualClock) -> None:
    """While the receiver holds the first delivery, operations finish and later events wait in the queue."""
    release = threading.Event()
    with Receiver(Reply(200, block=release), Reply(200)) as receiver:
        notifier = notifier_for(hook(receiver.url))
        manager = canary_in_progress(clock)
        notifier.attach(manager)
        try:
            clock.advance(61)
            manager.advance_rollout(actor="bob")
            receiver.wait_for(1)  # the worker is inside the first (blocked) delivery
            manager.rollback(actor="bob")  # returns although the receiver has not answered
            assert manager.get_rollout_status() is None
            assert notifier.queue_depth() == 2  # one in flight, one queued
            release.set()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            release.set()
            notifier.close()
    assert [d["outcome"] for d in notifier.deliveries()] == ["delivered", "delivered"]


def test_a_full_queue_drops_and_counts(clock: ManualClock) -> None:
    """A bounded queue: past max_queue, events are dropped (counted), never waited for."""
    release = threading.Event()
    with Receiver(Reply(200, block=release)) as receiver:
        notifier = notifier_for(hook(receiver.url), max_queue=1)
        manager = canary_in_progress(clock)
        notifier.attach(manager)
        try:
            clock.advance(61)
            manager.advance_rollout(actor="bob")
            receiver.wait_for(1)
            manager.rollback(actor="bob")
            release.set()
            assert notifier.wait_idle(IDLE_SECS)
        finally:
            release.set()
            notifier.close()
    assert notifier.delivery_counts()[("chat", "dropped")] == 1
    assert notifier.deliveries()[-1]["outcome"] == "dropped"


def test_deliveries_show_in_metrics_and_the_dashboard_feed(manager: DeploymentManager) -> None:
    """Delivery outcomes are counters in /metrics and rows in the dashboard payload."""
    with Receiver() as receiver:
        notifier = notifier_for(hook(receiver.url)).attach(manager)
        try:
            manager.activate_deployment(manager.prepare_deployment(GATEWAY_V1))
            assert notifier.wait_idle(IDLE_SECS)
            registry = CollectorRegistry()
            register(manager, registry, notifier=notifier)
            text = generate_latest(registry).decode()
            client = TestClient(make_app_with(manager, notifier))
            with client.stream("GET", "/api/v1/events?max_events=1") as response:
                frame = response.read().decode()
            status = client.get("/api/v1/status").json()
        finally:
            notifier.close()
    assert 'rule_engine_webhook_deliveries_total{deployment="default",outcome="delivered",webhook="chat"} 1.0' in text
    payload = json.loads(next(line[6:] for line in frame.splitlines() if line.startswith("data: ")))
    assert payload["webhooks"][0]["outcome"] == "delivered"
    assert payload["webhook_state"] == status["webhooks"] == {"queue_depth": 0, "counts": {"chat": {"delivered": 1}}}


def make_app_with(manager: DeploymentManager, notifier: Notifier) -> object:
    from rule_engine.server.app import ServerSettings, create_app
    from tests._support_server import tokens

    return create_app(manager, ServerSettings(tokens=tokens()), notifier=notifier)


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"name": "x", "url": "ftp://127.0.0.1/"}, "http"),
        ({"name": "x", "url": "http://127.0.0.1/", "events": ["nope"]}, "unknown events"),
        ({"name": "x y", "url": "http://127.0.0.1/"}, "name"),
        ({"name": "x", "url": "http://127.0.0.1/", "secret_env": "UNSET_FOR_TESTS"}, "not set"),
        ({"name": "x", "url": "http://127.0.0.1/", "surprise": 1}, "surprise"),
    ],
)
def test_a_bad_webhooks_file_is_refused(tmp_path: Path, entry: dict[str, object], fragment: str) -> None:
    """The file is validated when loaded, with a message naming the field."""
    path = tmp_path / "webhooks.json"
    path.write_text(json.dumps({"webhooks": [entry]}))
    with pytest.raises(WebhookConfigError, match=fragment):
        load_webhooks(path)


def test_a_webhooks_file_loads(tmp_path: Path) -> None:
    """Event and gate webhooks from one file."""
    path = tmp_path / "webhooks.json"
    path.write_text(
        json.dumps(
            {
                "webhooks": [
                    {"name": "chat", "url": "http://127.0.0.1:1/", "secret_env": "HOOK_SECRET"},
                    {"name": "load", "type": "gate", "step": "promotion", "url": "http://127.0.0.1:1/"},
                ]
            }
        )
    )
    hooks = load_webhooks(path)
    assert [(h.name, h.type) for h in hooks] == [("chat", "event"), ("load", "gate")]


# --- serve ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "controller"])
def test_serve_and_controller_refuse_a_bad_webhooks_file_with_one_line(tmp_path: Path, command: str) -> None:
    """'serve --webhooks FILE' and 'controller --webhooks FILE' validate the file before doing anything."""
    from click.testing import CliRunner

    from rule_engine.cli import cli

    path = tmp_path / "webhooks.json"
    path.write_text('{"webhooks": [{"name": "x", "url": "file:///etc/passwd"}]}')
    once = ["--once"] if command == "controller" else []
    result = CliRunner().invoke(cli, ["--store", "memory://", command, "--webhooks", str(path), *once])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "http" in result.stderr
