"""Gate webhooks: the HTTP form of a controller gate (``DeploymentManager.set_gate``).

:class:`Gates` asks every gate webhook of a deployment whose ``step`` matches (``activation``: a
scheduled version's activation; ``stage``: the next canary stage; ``promotion``: the canary's step to
100%; ``any``) in turn, by a POST of the question; a 2xx answer lets the step go ahead, anything
else (another status, a timeout, an unreachable gate) holds it with the gate's reply as the reason.
The controller asks from its own thread and waits at most :func:`ask_timeout` seconds
(deployment/gating.py), never from a request handler or the data plane.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rule_engine.deployment.gating import MAX_GATE_TIMEOUT, GateAnswer, GateQuestion
from rule_engine.observability.webhooks import Webhook, WebhookReply, post

if TYPE_CHECKING:
    from rule_engine.deployment.manager import DeploymentManager

__all__ = ["Gates", "ask_timeout", "install_gates"]

MAX_REASON = 300


class Gates:
    """The gate webhooks of one deployment, as one :class:`~rule_engine.deployment.gating.Gate`."""

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

    def ask(self, question: GateQuestion) -> GateAnswer:
        """Ask each gate for ``question.step`` in turn; the first that does not answer 2xx holds it."""
        payload = {"event": "gate", "deployment": self.deployment, **question.to_dict()}
        for hook in self.webhooks:
            if hook.step not in ("any", question.step):
                continue
            reply = self._send(hook, "gate", payload, str(uuid.uuid4()))
            if not reply.ok:
                said = " ".join(reply.body.split())[:MAX_REASON]
                code = f"HTTP {reply.status}" if reply.status is not None else "unreachable"
                return GateAnswer(False, f"gate {hook.name} ({code}): {said}" if said else f"gate {hook.name} ({code})")
        return GateAnswer(True)


def ask_timeout(gates: Gates) -> float:
    """How long the controller waits for one step's answers: every gate's timeout in turn, at most 60 s."""
    return min(MAX_GATE_TIMEOUT, sum(h.timeout_secs for h in gates.webhooks) or 5.0)


def install_gates(manager: DeploymentManager, webhooks: Sequence[Webhook], deployment: str = "default") -> bool:
    """Register the gate webhooks among ``webhooks`` as ``manager``'s gate; False when there is none."""
    gates = Gates(webhooks, deployment=deployment)
    if not gates:
        return False
    manager.set_gate(gates, ask_timeout(gates))
    return True
