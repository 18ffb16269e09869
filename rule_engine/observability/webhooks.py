"""Notification webhooks for rollout events: signed JSON, delivered from a background queue with retries.

The model is Flagger's webhooks: each webhook has a ``name``, a ``url`` and a ``type``; ``event``
webhooks are told about rollout events, ``gate`` webhooks are asked before a step
(:mod:`rule_engine.observability.gates`). A configuration file looks like::

    {"webhooks": [
      {"name": "chat", "type": "event", "url": "https://chat.example/hook", "secret_env": "CHAT_SECRET",
       "events": ["rollout.rolled_back", "rollout.completed"]},
      {"name": "load-test", "type": "gate", "step": "stage", "url": "http://127.0.0.1:9000/gate"}
    ]}

Each delivery POSTs a JSON body with the headers ``X-Rule-Engine-Event``, ``X-Rule-Engine-Delivery``
and, when the webhook has a secret, ``X-Rule-Engine-Signature-256: sha256=HEX`` (HMAC-SHA256 of the
body, as GitHub signs webhooks). :class:`Notifier` puts deliveries on a bounded queue and never
blocks the caller (a full queue drops and counts); one worker thread posts them, retrying failures
with exponential backoff capped at ``backoff_cap`` up to ``max_attempts``. Delivery state (the last
``history`` deliveries and counts by outcome) is visible in status, the dashboard and ``/metrics``.

:meth:`Notifier.attach` listens to the manager's hooks: after-swap (what serves changed), after-change
(pauses and resumes), on-hold (the controller saw a hold begin, change cause or end: ``rollout.held``
with its ``cause``, and ``fleet.lagging`` for the fleet) and on-error. The event list and a sample
body are in docs/operations.md.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rule_engine.clock import iso
from rule_engine.deployment.hooks import DeploymentEvent, HookPoint
from rule_engine.errors import RuleEngineError

if TYPE_CHECKING:
    from rule_engine.deployment.manager import DeploymentManager

__all__ = [
    "EVENTS",
    "Notifier",
    "Webhook",
    "WebhookConfigError",
    "WebhookReply",
    "event_name",
    "load_webhooks",
    "post",
    "sign",
]

_log = structlog.get_logger("rule_engine")
EVENTS = (
    "deployment.activated",
    "rollout.started",
    "rollout.advanced",
    "rollout.held",
    "rollout.paused",
    "rollout.resumed",
    "rollout.completed",
    "rollout.rolled_back",
    "fleet.lagging",
    "experiment.concluded",
    "operation.failed",
)
MAX_WEBHOOKS = 50
MAX_REPLY_BYTES = 4096


class WebhookConfigError(RuleEngineError, ValueError):
    """The webhooks file is malformed."""


class Webhook(BaseModel):
    """One webhook: where, what kind, which events or step, its secret's environment variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    url: str = Field(max_length=2048)
    type: Literal["event", "gate"] = "event"
    events: tuple[str, ...] | None = None  # event webhooks: None means every event
    step: Literal["activation", "stage", "promotion", "any"] = "any"  # gate webhooks: which steps they gate
    secret_env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")
    timeout_secs: float = Field(default=5.0, gt=0, le=60)
    max_attempts: int = Field(default=5, ge=1, le=20)

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: tuple[str, ...] | None) -> tuple[str, ...] | None:
        unknown = sorted(set(events or ()) - set(EVENTS))
        if unknown:
            raise ValueError(f"unknown events {unknown}; known: {list(EVENTS)}")
        return events

    def secret(self) -> bytes | None:
        """The signing secret from the environment (None when the webhook has none)."""
        if self.secret_env is None:
            return None
        value = os.environ.get(self.secret_env)
        if not value:
            raise WebhookConfigError(f"webhook {self.name!r}: environment variable {self.secret_env} is not set")
        return value.encode("utf-8")

    def wants(self, event: str) -> bool:
        """Whether this event webhook is told about ``event``."""
        return self.type == "event" and (self.events is None or event in self.events)


def load_webhooks(path: str | os.PathLike[str]) -> list[Webhook]:
    """Read and validate a webhooks file (secrets are checked to be set now, not at the first event)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WebhookConfigError(f"webhooks file {file}: {exc}") from None
    entries = data.get("webhooks") if isinstance(data, dict) else None
    if not isinstance(entries, list) or len(entries) > MAX_WEBHOOKS:
        raise WebhookConfigError(f'webhooks file {file}: expected {{"webhooks": [...]}} with at most {MAX_WEBHOOKS}')
    try:
        hooks = [Webhook.model_validate(entry) for entry in entries]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WebhookConfigError(f"webhooks file {file}: {where}: {first['msg']}") from None
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise WebhookConfigError(f"webhooks file {file}: webhook names must be unique")
    for hook in hooks:
        hook.secret()
    return hooks


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: ``sha256=`` and the HMAC-SHA256 of the body in hex."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """What a receiver answered: its status (None when it could not be reached) and the start of its body."""

    status: int | None
    body: str

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a webhook that redirects has failed: never re-post a signed body elsewhere


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(hook: Webhook, event: str, payload: Mapping[str, Any], delivery_id: str) -> WebhookReply:
    """POST ``payload`` to ``hook`` (signed if it has a secret); never raises for network failures."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
    request = urllib.request.Request(hook.url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", "rule-engine-webhook")
    request.add_header("X-Rule-Engine-Event", event)
    request.add_header("X-Rule-Engine-Delivery", delivery_id)
    secret = hook.secret()
    if secret is not None:
        request.add_header("X-Rule-Engine-Signature-256", sign(secret, body))
    try:
        with _OPENER.open(request, timeout=hook.timeout_secs) as response:
            return WebhookReply(response.status, response.read(MAX_REPLY_BYTES).decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        text = exc.read(MAX_REPLY_BYTES).decode("utf-8", "replace") if exc.fp else ""
        exc.close()
        return WebhookReply(exc.code, text)
    except (OSError, ValueError) as exc:  # refused, timed out, DNS, malformed URL
        return WebhookReply(None, f"{type(exc).__name__}: {exc}")


def event_name(event: DeploymentEvent) -> str:
    """The webhook event a manager's after-swap event is."""
    candidate_after = event.serving_after[1]
    if event.action in ("rollback", "abort"):
        return "rollout.rolled_back"
    if (
        event.action == "activate"
    ):  # a rollout starts with a candidate serving, or in its shadow phase (stable unchanged)
        shadowing = event.version_id is not None and event.serving_after[0] != event.version_id
        return "rollout.started" if candidate_after or shadowing else "deployment.activated"
    if event.action == "advance":
        return "rollout.advanced" if candidate_after else "rollout.completed"
    if event.action == "promote":
        return "rollout.completed"
    if event.action == "conclude":
        return "experiment.concluded"
    return f"deployment.{event.action}"


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    hook: Webhook = field(compare=False)
    event: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False)
    id: str = field(compare=False)
    attempts: int = field(default=0, compare=False)
    record: dict[str, Any] = field(default_factory=dict, compare=False)


class Notifier:
    """Delivers event webhooks from a bounded queue on one background thread; :meth:`notify` never blocks."""

    def __init__(
        self,
        webhooks: Sequence[Webhook],
        *,
        deployment: str = "default",
        max_queue: int = 1000,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        history: int = 100,
        send: Callable[[Webhook, str, Mapping[str, Any], str], WebhookReply] = post,
    ) -> None:
        self.webhooks = tuple(h for h in webhooks if h.type == "event")
        self.deployment = deployment
        self.max_queue = max_queue
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._send = send
        self._cond = threading.Condition()
        self._heap: list[_Delivery] = []
        self._in_flight = 0
        self._seq = itertools.count()
        self._stop = False
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._counts: dict[tuple[str, str], int] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._pause_told: tuple[str, str] | None = None  # (candidate, "paused" or "resumed") last told
        self._thread = threading.Thread(target=self._run, name="rule-engine-webhooks", daemon=True)

    # --- wiring ------------------------------------------------------------------------------------

    def attach(self, manager: DeploymentManager) -> Notifier:
        """Subscribe to the manager's hooks (after-swap, after-change, on-hold, on-error) and start delivering."""
        self._unsubscribe.append(manager.subscribe(HookPoint.AFTER_SWAP, self._on_swap))
        self._unsubscribe.append(manager.subscribe(HookPoint.AFTER_CHANGE, self._on_change))
        self._unsubscribe.append(manager.subscribe(HookPoint.ON_HOLD, self._on_hold))
        self._unsubscribe.append(manager.subscribe(HookPoint.ON_ERROR, self._on_error))
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def _on_swap(self, event: DeploymentEvent) -> None:
        data: dict[str, Any] = {
            "version_id": event.version_id,
            "actor": event.actor,
            "reason": event.reason,
            "serving_before": _serving(event.serving_before),
            "serving_after": _serving(event.serving_after),
        }
        if event.action in ("rollback", "abort"):
            data["cause"] = "automatic" if event.automatic or event.actor == "controller" else "manual"
            data["operation"] = event.action
        self.notify(event_name(event), data)

    def _on_change(self, event: DeploymentEvent) -> None:
        """A pause or a resume (they change no serving, so after-swap never tells them)."""
        if event.action in ("pause", "resume") and event.version_id is not None:
            self._tell_pause(event, "paused" if event.action == "pause" else "resumed")

    def _on_hold(self, event: DeploymentEvent) -> None:
        """The controller saw the rollout's hold begin, change cause, or end."""
        if event.cause == "paused" and event.version_id is not None:  # a pause by another process, seen by a tick
            self._tell_pause(event, "paused" if event.action == "held" else "resumed")
            return
        if event.action != "held":
            return
        data = {
            "version_id": event.version_id,
            "actor": event.actor,
            "cause": event.cause,
            "reason": event.reason,
            "serving": _serving(event.serving_after),
        }
        self.notify("rollout.held", data)
        if event.cause == "fleet":
            self.notify("fleet.lagging", data)

    def _tell_pause(self, event: DeploymentEvent, kind: str) -> None:
        """Tell ``rollout.paused`` / ``rollout.resumed`` once, whichever hook saw it first."""
        assert event.version_id is not None
        told = (event.version_id, kind)
        with self._cond:
            if self._pause_told == told:
                return
            self._pause_told = told
        data = {"version_id": event.version_id, "actor": event.actor, "reason": event.reason}
        self.notify(f"rollout.{kind}", {**data, "serving": _serving(event.serving_after)})

    def _on_error(self, event: DeploymentEvent) -> None:
        self.notify("operation.failed", {"operation": event.action, "actor": event.actor, "reason": event.reason})

    # --- the queue ---------------------------------------------------------------------------------

    def notify(self, event: str, data: Mapping[str, Any]) -> None:
        """Queue ``event`` for every webhook that wants it; drops (and counts) when the queue is full."""
        now = time.time()
        for hook in self.webhooks:
            if not hook.wants(event):
                continue
            delivery_id = str(uuid.uuid4())
            payload = {
                "event": event,
                "deployment": self.deployment,
                "time": iso(now),
                "delivery_id": delivery_id,
                **data,
            }
            record = {"id": delivery_id, "webhook": hook.name, "event": event, "time": iso(now), "attempts": 0}
            with self._cond:
                if len(self._heap) + self._in_flight >= self.max_queue:
                    self._finish(record, hook.name, "dropped", "the delivery queue is full")
                    continue
                record["outcome"] = "pending"
                self._history.append(record)
                heapq.heappush(
                    self._heap,
                    _Delivery(time.monotonic(), next(self._seq), hook, event, payload, delivery_id, 0, record),
                )
                self._cond.notify()

    def _finish(self, record: dict[str, Any], webhook: str, outcome: str, detail: str) -> None:
        """Set a delivery's outcome and count it (caller holds the condition)."""
        record["outcome"] = outcome
        record["detail"] = detail[:300]
        if record not in self._history:
            self._history.append(record)
        key = (webhook, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0].due > time.monotonic()):
                    self._cond.wait(timeout=(self._heap[0].due - time.monotonic()) if self._heap else None)
                if self._stop:
                    return
                delivery = heapq.heappop(self._heap)
                self._in_flight += 1
            try:
                reply = self._send(delivery.hook, delivery.event, delivery.payload, delivery.id)
            except (
                Exception
            ) as exc:  # a missing secret, a bug in a custom sender: a failed attempt, never a dead worker
                reply = WebhookReply(None, f"{type(exc).__name__}: {exc}")
            with self._cond:
                self._in_flight -= 1
                delivery.attempts += 1
                delivery.record["attempts"] = delivery.attempts
                detail = f"HTTP {reply.status}" if reply.status is not None else reply.body
                if reply.ok:
                    self._finish(delivery.record, delivery.hook.name, "delivered", detail)
                elif delivery.attempts >= delivery.hook.max_attempts:
                    self._finish(delivery.record, delivery.hook.name, "failed", detail)
                    _log.warning(
                        "webhook.failed", webhook=delivery.hook.name, webhook_event=delivery.event, detail=detail
                    )
                else:
                    key = (delivery.hook.name, "retried")
                    self._counts[key] = self._counts.get(key, 0) + 1
                    delivery.record.update(outcome="retrying", detail=detail[:300])
                    wait = min(self.backoff_cap, self.backoff_base * 2 ** (delivery.attempts - 1))
                    delivery.due = time.monotonic() + wait
                    heapq.heappush(self._heap, delivery)
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until nothing is queued or in flight; True if so."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=left)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Unsubscribe and stop the worker (deliveries still queued are abandoned)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- state -------------------------------------------------------------------------------------

    def delivery_counts(self) -> dict[tuple[str, str], int]:
        """Deliveries by (webhook, outcome): delivered, failed, dropped; retried counts retries."""
        with self._cond:
            return dict(self._counts)

    def queue_depth(self) -> int:
        """Deliveries waiting (including those waiting to be retried) or in flight."""
        with self._cond:
            return len(self._heap) + self._in_flight

    def deliveries(self) -> list[dict[str, Any]]:
        """The last deliveries, oldest first, with outcome, attempts and detail."""
        with self._cond:
            return [dict(r) for r in self._history]


def _serving(serving: tuple[str | None, str | None, float]) -> dict[str, Any]:
    return {"stable": serving[0], "candidate": serving[1], "candidate_percentage": serving[2]}
