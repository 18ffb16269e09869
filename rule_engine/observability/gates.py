"""Gate webhooks: asked before a canary step; a 2xx reply lets it go ahead, anything else holds it.

:class:`Gates` asks every gate webhook for a step (``stage``: the next canary stage; ``promotion``: the
step to 100%) and returns a :class:`GateDecision` whose reason is the refusing gate's reply. Gates are
asked synchronously with each webhook's timeout, from the controller's thread, never from a request
handler or the data plane.

:class:`GatedController` is a controller step that consults the gates before the manager's
:meth:`~rule_engine.DeploymentManager.tick` may advance a canary. It needs no manager change: when a
step is due (or due within ``margin_secs``) and a gate refuses, it skips ``tick()`` for that round,
still ticking for an unhealthy candidate (``tick()`` never advances one), and notifies
``rollout.held`` with the reason. A manager-side hook would remove the ``margin_secs`` window
(docs/operations.md, "Gates").
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from rule_engine.clock import Clock, SystemClock
from rule_engine.observability.webhooks import Notifier, Webhook, WebhookReply, post

if TYPE_CHECKING:
    from rule_engine.control.status import RolloutStatus
    from rule_engine.deployment.manager import DeploymentManager

__all__ = ["GateDecision", "GatedController", "Gates", "step_of"]

_log = structlog.get_logger("rule_engine")
MAX_REASON = 300


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Whether a step may go ahead, and why not."""

    allowed: bool
    reason: str = ""


def step_of(status: RolloutStatus) -> str:
    """The kind of the canary's next step: ``promotion`` when it reaches 100%, else ``stage``."""
    return "promotion" if status.stage >= len(status.stages) - 1 else "stage"


class Gates:
    """The gate webhooks of one deployment."""

    def __init__(
        self,
        webhooks: Sequence[Webhook],
        *,
        deployment: str = "default",
        send: Callable[[Webhook, str, Mapping[str, Any], str], WebhookReply] = post,
    ) -> None:
        self.webhooks = tuple(h for h in webhooks if h.type == "gate")
        self.deployment = deployment
        self._send = send

    def __bool__(self) -> bool:
        return bool(self.webhooks)

    def ask(self, step: str, status: RolloutStatus) -> GateDecision:
        """Ask each gate for ``step`` in turn; the first that does not answer 2xx holds it."""
        stages = list(status.stages)
        payload = {
            "event": "gate",
            "step": step,
            "deployment": self.deployment,
            "version_id": status.version_id,
            "stable_version_id": status.stable_version_id,
            "stage": status.stage,
            "stages": stages,
            "percentage": status.percentage,
            "next_percentage": stages[status.stage] if status.stage < len(stages) else None,
        }
        for hook in self.webhooks:
            if hook.step not in ("any", step):
                continue
            reply = self._send(hook, "gate", payload, str(uuid.uuid4()))
            if not reply.ok:
                said = " ".join(reply.body.split())[:MAX_REASON]
                code = f"HTTP {reply.status}" if reply.status is not None else "unreachable"
                return GateDecision(
                    False, f"gate {hook.name} ({code}): {said}" if said else f"gate {hook.name} ({code})"
                )
        return GateDecision(True)


class GatedController:
    """A controller step: ``tick()`` unless a gate holds the canary's due step."""

    def __init__(
        self,
        manager: DeploymentManager,
        gates: Gates,
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        margin_secs: float = 2.0,
    ) -> None:
        self.manager = manager
        self.gates = gates
        self.notifier = notifier
        self.clock = clock if clock is not None else SystemClock()
        self.margin_secs = margin_secs
        self._lock = threading.Lock()
        self._holding: str | None = None

    @property
    def holding(self) -> str | None:
        """Why a gate holds the rollout now (None when no gate holds it)."""
        with self._lock:
            return self._holding

    def step(self) -> None:
        """One controller round."""
        status = self.manager.get_rollout_status()
        if not self.gates or status is None or status.strategy != "canary" or status.next_step_at is None:
            self._set_holding(None, status)
            self.manager.tick()
            return
        if self.clock.now() + self.margin_secs < status.next_step_at:
            self.manager.tick()  # no step can be due during this tick
            return
        if status.verdict.healthy is False:  # tick() never advances an unhealthy candidate: it rolls back or holds
            self.manager.tick()
            return
        if status.verdict.healthy is None:  # no verdict yet: nothing to do for the canary, and no tick that could
            return  # turn the verdict healthy and advance without asking the gates
        decision = self.gates.ask(step_of(status), status)
        if decision.allowed:
            self._set_holding(None, status)
            self.manager.tick()
            return
        self._set_holding(decision.reason, status)

    def _set_holding(self, reason: str | None, status: RolloutStatus | None) -> None:
        with self._lock:
            changed, self._holding = reason != self._holding, reason
        if changed and reason is not None and status is not None:
            _log.info("rollout.held", version_id=status.version_id, reason=reason, by="gate")
            if self.notifier is not None:
                self.notifier.notify(
                    "rollout.held",
                    {"version_id": status.version_id, "reason": reason, "stage": status.stage, "actor": "controller"},
                )
