"""Gates: asked by the controller before an automatic step; "go ahead" or "hold, because ...".

A :class:`Gate` (registered with ``DeploymentManager.set_gate``) is asked a :class:`GateQuestion`
before each step ``tick()`` takes by itself: a scheduled version's ``activation`` (the blue-green
switch, or the start of its rollout), each canary ``stage`` and the canary's last step to 100%, the
``promotion``. Operations a person asks for (``advance_rollout``, ``promote``, ``conclude_experiment``,
``rollback``, ...) are not gated, and neither are automatic rollbacks: a gate never shields an
unhealthy version.

:class:`GateKeeper` asks outside the manager's lock, on a worker thread, and waits at most
``timeout_secs``: a gate that answers no, raises or does not answer in time holds the step, with its
answer as the reason, and is asked again at the next tick. At most one ask is in flight: while a
late answer is still coming, the step holds without asking again, so a hung gate costs one thread,
not one per tick.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from rule_engine.logs import get_logger

__all__ = ["MAX_GATE_TIMEOUT", "Gate", "GateAnswer", "GateKeeper", "GateQuestion"]

_log = get_logger()
MAX_GATE_TIMEOUT = 60.0
MAX_REASON = 300


@dataclass(frozen=True, slots=True)
class GateQuestion:
    """The step a gate is asked about: which kind, for which version, from which stage to which share."""

    step: str  # "activation", "stage" or "promotion"
    version_id: str
    stable_version_id: str | None
    strategy: str
    stage: int  # 1-based stage the rollout is at (0 before an activation)
    stages: tuple[float, ...]
    percentage: float
    next_percentage: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (what an HTTP gate is posted)."""
        return {
            "step": self.step,
            "version_id": self.version_id,
            "stable_version_id": self.stable_version_id,
            "strategy": self.strategy,
            "stage": self.stage,
            "stages": list(self.stages),
            "percentage": self.percentage,
            "next_percentage": self.next_percentage,
        }


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """Whether a step may go ahead, and why not."""

    allowed: bool
    reason: str = ""


class Gate(Protocol):
    """Anything that answers whether a step may go ahead (it may block; the controller bounds the wait)."""

    def ask(self, question: GateQuestion) -> GateAnswer:
        """The answer for ``question``."""
        ...


class _Ask:
    """One ask on its own thread; the answer lands in ``answer`` and sets ``done``."""

    def __init__(self, gate: Gate, question: GateQuestion) -> None:
        self.question = question
        self.done = threading.Event()
        self.answer = GateAnswer(False, "the gate has not answered")
        self._gate = gate
        threading.Thread(target=self._run, name="rule-engine-gate", daemon=True).start()

    def _run(self) -> None:
        try:
            answer = self._gate.ask(self.question)
            if not isinstance(answer, GateAnswer):
                answer = GateAnswer(False, f"the gate answered {type(answer).__name__}, not GateAnswer")
        except Exception as exc:  # a broken gate holds the step; it never breaks the tick
            answer = GateAnswer(False, f"the gate failed: {type(exc).__name__}: {exc}")
        self.answer = answer
        self.done.set()


class GateKeeper:
    """The registered gate, asked with a bounded wait (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gate: Gate | None = None
        self._timeout = 5.0
        self._pending: _Ask | None = None

    def set(self, gate: Gate | None, timeout_secs: float = 5.0) -> None:
        """Ask ``gate`` (None: no gate) and wait at most ``timeout_secs`` (0 < t <= 60) for each answer."""
        if not (isinstance(timeout_secs, int | float) and math.isfinite(timeout_secs)):
            raise ValueError(f"gate timeout must be a number of seconds, got {timeout_secs!r}")
        if not 0 < timeout_secs <= MAX_GATE_TIMEOUT:
            raise ValueError(f"gate timeout must be in (0, {MAX_GATE_TIMEOUT:g}] seconds, got {timeout_secs:g}")
        if gate is not None and not callable(getattr(gate, "ask", None)):
            raise TypeError(f"a gate needs an ask(question) method, got {type(gate).__name__}")
        with self._lock:
            self._gate, self._timeout, self._pending = gate, float(timeout_secs), None

    def __bool__(self) -> bool:
        return self._gate is not None

    def holds(self, question: GateQuestion) -> str | None:
        """Why the gate holds ``question``'s step (None: go ahead); waits at most the timeout."""
        with self._lock:
            gate, timeout, pending = self._gate, self._timeout, self._pending
            if gate is None:
                return None
            if pending is not None and not pending.done.is_set():
                return f"the gate has not answered within {timeout:g} s (still waiting for its answer)"
            ask = self._pending = _Ask(gate, question)
        if not ask.done.wait(timeout):
            _log.warning("gate.timeout", version_id=question.version_id, step=question.step, timeout_secs=timeout)
            return f"the gate has not answered within {timeout:g} s"
        with self._lock:
            if self._pending is ask:
                self._pending = None
        if ask.answer.allowed:
            return None
        return " ".join(str(ask.answer.reason).split())[:MAX_REASON] or "the gate refused"
