"""The controller's side of a stored shadow phase: judge the fleet's figures, proceed or abort.

Every process that follows the store and serves decides a sample of live events on the candidate
(the publisher attaches a shadow evaluator while the stored rollout is in its shadow phase) and
flushes its counts into the candidate's shadow bucket with its other health counters. The
controller's tick calls :meth:`ShadowJudge.step`: it reads the fleet-wide figures over the health
window (since the phase started), judges them with the rollout's :class:`ShadowPolicy`, and
commits the outcome (``proceed``: the first canary stage or the blue-green switch; ``abort``: the
rollout aborted with the reason), planned from the stored state so several controllers do it once.
"""

from __future__ import annotations

from collections.abc import Callable

from rule_engine.clock import Clock
from rule_engine.control.records import ControlState
from rule_engine.control.shadow_phase import end_shadow
from rule_engine.control.shadowing import ShadowPhase, in_shadow, shadow_options
from rule_engine.control.transitions import Change
from rule_engine.deployment.commit import Committer, Plan, nothing_to_do
from rule_engine.deployment.config import DeploymentConfig
from rule_engine.deployment.publisher import Publisher
from rule_engine.health.ledger import HealthLedger
from rule_engine.logs import get_logger

__all__ = ["ShadowJudge"]

_log = get_logger()


class ShadowJudge:
    """Judges the rollout's shadow phase (if it is in one) and acts on the verdict."""

    def __init__(
        self,
        committer: Committer,
        publisher: Publisher,
        ledger: HealthLedger,
        clock: Clock,
        config: Callable[[], DeploymentConfig],
    ) -> None:
        self._committer = committer
        self._publisher = publisher
        self._ledger = ledger
        self._clock = clock
        self._config = config
        self._held: tuple[str, str] | None = None  # the (candidate, reason) last logged as holding

    def phase(self, state: ControlState, now: float) -> ShadowPhase | None:
        """The shadow phase of ``state``'s rollout with its figures and verdict (None: not in one).

        Reads the store (call under the manager's lock, after flushing this process's counts).
        """
        rollout = state.rollout
        record = state.versions.get(rollout.candidate) if rollout is not None and in_shadow(rollout) else None
        options = shadow_options(record.strategy) if record is not None else None
        if rollout is None or options is None:
            return None
        report = self._ledger.shadow_report(state, rollout, options.sample_rate, now)
        window = self._ledger.thresholds_for(state, rollout.candidate).window_secs
        return ShadowPhase(options, report, options.policy().judge(report), window)

    def step(self) -> tuple[list[str], list[str]]:
        """Judge the shadow phase once; (what was done, ``[]``: a hold is told by the rollout's status)."""
        with self._committer.lock:
            now = self._clock.now()
            self._ledger.flush(now)
            state = self._publisher.state
            phase = self.phase(state, now)
        if phase is None or state.rollout is None:
            return [], []
        candidate, verdict = state.rollout.candidate, phase.verdict
        if verdict.action == "hold" or (state.rollout.paused_at is not None and verdict.action == "proceed"):
            why = phase.holding or "shadow: paused; the verdict would proceed"
            if self._held != (candidate, why):
                self._held = (candidate, why)
                _log.info("shadow.holding", version_id=candidate, reason=why, compared=phase.report.compared)
            return [], []  # the tick's report says why from the rollout's status (control/status.py)
        action = "abort" if verdict.action == "abort" else "advance"  # as hooks and webhooks know them
        change = self._committer.apply(
            self._plan(candidate, verdict.action, verdict.reason), action, "controller", candidate
        )
        if not change.audit:
            return [], []
        if verdict.action == "abort":
            _log.warning("shadow.aborted", version_id=candidate, reason=verdict.reason)
            return [f"aborted {candidate}: shadow: {verdict.reason}"], []
        return [f"{candidate} left its shadow phase: {verdict.reason}"], []

    def _plan(self, candidate: str, action: str, reason: str) -> Plan:
        max_history = self._config().max_history

        def plan(state: ControlState, now: float) -> Change:
            change = end_shadow(
                state, now, "controller", candidate=candidate, action=action, reason=reason, max_history=max_history
            )
            return change or nothing_to_do(state)

        return plan
