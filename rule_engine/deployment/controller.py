"""Controller: the time-driven work of a deployment, done by ``tick()``.

One tick activates scheduled versions that are due, ends A/B tests whose duration has passed, judges
the candidate (and a newly active version during its bake time) and rolls back or holds the
unhealthy, prunes old health buckets, and advances a healthy canary whose stage is due. Every step
is planned from the stored state and committed against its revision, so several processes ticking
at once do each step exactly once. The state is read once per step, never twice across a release
of the lock.

A registered gate (deployment/gating.py) is asked, outside the lock and for at most its timeout,
before a scheduled activation and before each canary stage (the last one is the ``promotion``); a
refusal holds the step with the gate's answer as the reason, until a later tick's ask allows it.
When the rollout's hold begins, changes cause or ends, on-hold hooks are told (deployment/holds.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from rule_engine.clock import Clock
from rule_engine.control import lifecycle
from rule_engine.control import transitions as control
from rule_engine.control.gate_holds import note_gate_hold
from rule_engine.control.records import ControlState, VersionRecord
from rule_engine.control.status import DeploymentInfo, RolloutStatus, TickReport, info_of, rollout_status
from rule_engine.control.transitions import Change
from rule_engine.deployment.commit import Committer, Plan, nothing_to_do
from rule_engine.deployment.config import DeploymentConfig
from rule_engine.deployment.gating import Gate, GateKeeper, GateQuestion
from rule_engine.deployment.holds import HoldWatch, cause_of
from rule_engine.deployment.hooks import HookPoint
from rule_engine.deployment.publisher import Publisher
from rule_engine.deployment.shadow_judge import ShadowJudge
from rule_engine.errors import InvalidTransitionError
from rule_engine.health.ledger import HealthLedger
from rule_engine.health.report import ExperimentReport, build_experiment_report
from rule_engine.health.thresholds import HealthMetrics, HealthThresholds
from rule_engine.health.verdict import Verdict
from rule_engine.logs import get_logger
from rule_engine.serving.routing import BASIS_POINTS

__all__ = ["Controller", "require_thresholds", "with_analysis"]

_log = get_logger()
Convergence = Callable[[ControlState, float], tuple[str | None, Plan | None]]


class Controller:
    """Verdicts on the versions in play, and the steps ``tick()`` takes."""

    def __init__(
        self,
        committer: Committer,
        publisher: Publisher,
        ledger: HealthLedger,
        clock: Clock,
        config: Callable[[], DeploymentConfig],
        convergence: Convergence | None = None,
    ) -> None:
        self._committer = committer
        self._publisher = publisher
        self._ledger = ledger
        self._clock = clock
        self._config = config
        self._convergence = convergence  # the fleet gate (deployment/fleet.py): before a stage advances or a bake
        self._held_rollbacks: set[str] = set()  # versions whose held rollback was logged
        self._shadow = ShadowJudge(committer, publisher, ledger, clock, config)  # a rollout's shadow phase
        self._gate = GateKeeper()
        self._holds = HoldWatch()

    def set_gate(self, gate: Gate | None, timeout_secs: float = 5.0) -> None:
        """Ask ``gate`` before each automatic step, waiting at most ``timeout_secs`` (None: no gate)."""
        self._gate.set(gate, timeout_secs)

    # --- verdicts (call under the lock) -------------------------------------------------------------

    def verdict_of(self, version_id: str, now: float) -> Verdict:
        """The verdict on ``version_id`` over the window ending at ``now``."""
        return self._ledger.verdict(self._publisher.state, version_id, now, auto_rollback=self._config().auto_rollback)

    def candidate_verdict(self, now: float | None = None) -> Verdict:
        """The verdict on the rollout's candidate (flushing this process's counts first)."""
        with self._committer.lock:
            rollout = self._publisher.state.rollout
            if rollout is None:
                return Verdict(None, "no rollout in progress")
            now = self._clock.now() if now is None else now
            self._ledger.flush(now)
            return self.verdict_of(rollout.candidate, now)

    def verdict_now(self, version_id: str) -> Verdict:
        """The verdict on ``version_id`` now (flushing this process's counts first)."""
        with self._committer.lock:
            now = self._clock.now()
            self._ledger.flush(now)
            return self.verdict_of(version_id, now)

    def info(self, version_id: str) -> DeploymentInfo | None:
        """Everything about a version with its health figures, or None if it is not in history."""
        with self._committer.lock:
            state = self._publisher.state
            record = state.versions.get(version_id)
            if record is None:
                return None
            now = self._clock.now()
            self._ledger.flush(now)
            window = self._ledger.window([version_id], now, self._ledger.thresholds_for(state, version_id))[version_id]
            verdict = self.verdict_of(version_id, now)
            lifetime = self._ledger.lifetime(version_id)
            return info_of(
                record, state, HealthMetrics.of(lifetime, window, verdict, self._ledger.last_check(version_id))
            )

    def experiment_report(self) -> ExperimentReport:
        """Per-variant figures of the A/B test in progress (raises when there is none)."""
        with self._committer.lock:
            now = self._clock.now()
            self._ledger.flush(now)
            rollout = self._publisher.state.rollout
            if rollout is None or rollout.finishes_by_itself:
                raise InvalidTransitionError("no A/B test is in progress")
            counts = self._ledger.since([rollout.stable, rollout.candidate], rollout.started_at, now)
            return build_experiment_report(rollout, counts[rollout.stable], counts[rollout.candidate], now)

    # --- the tick -------------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Do all time-driven work once (see the module docstring)."""
        actions: list[str] = []
        holding: list[str] = []
        step_hold: tuple[str, str] | None = None  # (cause, reason) of a gate (or fleet) hold
        held_schedule: str | None = None  # a scheduled version whose activation the gate holds
        state = self._publisher.state
        for record in control.scheduled_due(state, self._clock.now()):
            if state.rollout is not None:
                holding.append(f"{record.version_id}: scheduled, waiting for the rollout of {state.rollout.candidate}")
                continue
            refused = None if record.held is not None else self._gate.holds(_activation_question(state, record))
            if refused is not None:
                holding.append(f"{record.version_id}: scheduled, held by the gate: {refused}")
                step_hold, held_schedule = step_hold or ("gate", refused), held_schedule or record.version_id
                continue
            change = self._apply(self._plan_scheduled(record.version_id), "activate", record.version_id)
            if change.audit and change.action == "activate":
                actions.append(f"activated scheduled {record.version_id}")
            state = self._publisher.state
        holding.extend(_held_schedules(state, self._clock.now()))
        change = self._apply(_plan_end_experiment, "end-experiment")
        if change.events:
            actions.append("ended A/B test")
        waiting = self._fleet_holds(self._publisher.state) if self._publisher.state.rollout is None else None
        if waiting is not None:  # an activation (a blue-green switch) bakes from the fleet's convergence
            holding.append(f"{self._publisher.state.active}: {waiting}")
        for done, held in (self._shadow.step(), self.judge_and_act()):  # shadow phase: deployment/shadow_judge.py
            actions.extend(done)
            holding.extend(held)
        actions.extend(self._check_progress())
        with self._committer.lock:
            state = self._publisher.state
            self._ledger.prune(self._clock.now(), state)
        rollout = state.rollout
        if rollout is not None:
            step_hold = None  # a rollout in play: its own holds are what is told
        if rollout is not None and rollout.finishes_by_itself:
            waiting = self._fleet_holds(state)
            if waiting is not None:
                holding.append(f"{rollout.candidate}: {waiting}")
                step_hold = ("fleet", waiting)
            elif self.candidate_verdict().healthy is True and rollout.held is None:
                go, refused = self._gate_step(state)
                if go:
                    change = self._apply(self._plan_advance(rollout.candidate, rollout.stage_index), "advance")
                    if change.result:
                        actions.append(f"advanced {rollout.candidate}")
                elif refused is not None:
                    step_hold = ("gate", refused)
        status = self.rollout_status()
        if status is not None and status.holding and rollout is not None and rollout.finishes_by_itself:
            holding.append(f"{status.version_id}: {status.holding}")
        self._tell_hold(status, step_hold, held_schedule)
        return TickReport(tuple(actions), tuple(holding))

    def _gate_step(self, state: ControlState) -> tuple[bool, str | None]:
        """Whether to try the canary's step now, and why the gate holds it (stored for status).

        Without a gate the plan decides whether the step is due. With one, the step is tried only
        when it was due at the reading the gate was asked at, and the gate allowed it: a step that
        falls due between that reading and the plan's waits for the next tick, so it is never taken
        unasked.
        """
        if not self._gate:
            return True, None
        rollout = state.rollout
        assert rollout is not None
        record = state.versions[rollout.candidate]
        due = rollout.paused_at is None and record.strategy.step_is_over(
            self._clock.now(), rollout.started_at, rollout.stage_started_at
        )
        if not due:
            return False, None
        refused = self._gate.holds(_stage_question(state, record))
        if refused is not None:  # stored once per hold or new reason, for every process's status
            self._apply(
                _plan_gate_hold(rollout.candidate, rollout.stage_index, refused), "gate-hold", rollout.candidate
            )
        return refused is None, refused

    def _tell_hold(
        self, status: RolloutStatus | None, step_hold: tuple[str, str] | None, held_schedule: str | None
    ) -> None:
        """Run on-hold hooks when the rollout's hold begins, changes cause or ends (deployment/holds.py)."""
        cause, reason = None, ""
        subject, stage = held_schedule, 0  # a scheduled version the gate holds, when nothing rolls out
        if status is not None:
            rollout = self._publisher.state.rollout
            held = rollout is not None and rollout.held is not None
            cause = cause_of(status, held_for_a_person=held, step_hold=step_hold[0] if step_hold else None)
            reason = step_hold[1] if step_hold is not None and cause == step_hold[0] else status.holding or ""
            subject, stage = status.version_id, status.stage
        elif subject is not None and step_hold is not None:
            cause, reason = step_hold
        event = self._holds.seen(subject, stage, cause, reason, self._publisher.serving())
        if event is not None:
            _log.info("rollout.hold_changed", version_id=event.version_id, action=event.action, cause=event.cause)
            self._committer.hooks.run(HookPoint.ON_HOLD, event)

    def rollout_status(self) -> RolloutStatus | None:
        """The rollout in progress and why it holds (None when there is none)."""
        with self._committer.lock:
            state = self._publisher.state
            if state.rollout is None:
                return None
            now = self._clock.now()
            self._ledger.flush(now)
            verdict = self.candidate_verdict(now)
            shadow = self._shadow.phase(state, now)
            return rollout_status(state, verdict, now, auto_rollback=self._config().auto_rollback, shadow=shadow)

    def judge_and_act(self) -> tuple[list[str], list[str]]:
        """Judge the candidate and a baking active version; roll back the unhealthy when automatic.

        Returns what was done and what holds. Automatic rollback acts only on the version a rollout
        or a deployment brought in (see :meth:`HealthLedger.baking`), so never twice for one
        incident; an unhealthy active version whose rollback target is not shown to be healthier
        (:meth:`HealthLedger.no_better_target`) is not rolled back: it holds, and says so.
        """
        actions: list[str] = []
        holding: list[str] = []
        config = self._config()
        with self._committer.lock:
            now = self._clock.now()
            self._ledger.flush(now)
            state = self._publisher.state
            suspects: list[tuple[str, str]] = []
            if state.rollout is not None:
                suspects.append(("candidate", state.rollout.candidate))
            elif state.active is not None and self._ledger.baking(state, now):
                suspects.append(("active", state.active))
            verdicts = [(role, vid, self.verdict_of(vid, now)) for role, vid in suspects]
            stays = {
                vid: self._ledger.no_better_target(state, vid, now)
                for role, vid, verdict in verdicts
                if role == "active" and verdict.healthy is False and config.auto_rollback
            }
        self._held_rollbacks &= set(state.versions)
        for role, version_id, verdict in verdicts:
            if verdict.healthy is not False:
                self._held_rollbacks.discard(version_id)  # a new incident is logged anew
                continue
            reason = verdict.reason
            if not config.auto_rollback:
                if role == "candidate":
                    held = self._apply(_plan_hold(version_id, reason), "hold", version_id)
                    if held.audit:
                        actions.append(f"held {version_id} for a person: {reason}")
                continue
            why = stays.get(version_id)
            if why is not None:
                holding.append(self._hold_rollback(version_id, reason, why))
                continue
            plan = _plan_automatic_rollback(version_id, role, reason, self._ledger.baking)
            change = self._apply(plan, "rollback", version_id)
            if change.audit:
                _log.warning(
                    "rollback.automatic", version_id=version_id, reason=reason, serving_version_id=change.result
                )
                actions.append(f"rolled back {version_id}: {reason}")
        return actions, holding

    def _hold_rollback(self, version_id: str, reason: str, why: str) -> str:
        """Say why an unhealthy version is not rolled back (logged once per version; in every tick's report)."""
        if version_id not in self._held_rollbacks:
            self._held_rollbacks.add(version_id)
            _log.warning("rollback.held", version_id=version_id, reason=reason, why=why)
        return (
            f"{version_id}: unhealthy ({reason}), not rolled back: {why}; "
            "decide with `rule-engine rollback` or deploy a fix"
        )

    def step(self) -> None:
        """One background tick; a failure is logged, never raised into the loop."""
        try:
            self.tick()
        except Exception as exc:
            _log.error("controller.tick_failed", error=f"{type(exc).__name__}: {exc}")

    def _fleet_holds(self, state: ControlState) -> str | None:
        """Why the fleet holds the rollout's stage (None: go on); records the stage's convergence once."""
        if self._convergence is None:
            return None
        waiting, converged = self._convergence(state, self._clock.now())
        if converged is not None:
            self._apply(converged, "converge")
        return waiting

    def _apply(self, plan: Plan, action: str, version_id: str | None = None) -> Change:
        return self._committer.apply(plan, action, "controller", version_id)

    def _plan_scheduled(self, version_id: str) -> Plan:
        max_history = self._config().max_history

        def plan(state: ControlState, now: float) -> Change:  # activate, or hold one a newer deploy overrides (D16)
            change = lifecycle.activate_scheduled(state, version_id, now, "controller", max_history=max_history)
            return change or nothing_to_do(state)

        return plan

    # --- lifecycle: the progress deadline (docs/deployment.md, "Progress deadline") --------------------

    def _check_progress(self) -> list[str]:
        """Hold (or abort) a rollout whose stage has had no verdict for its progress deadline."""
        rollout = self._publisher.state.rollout
        if rollout is None or rollout.progress_deadline_secs is None:
            return []
        verdict = self.candidate_verdict()
        reached, detail = verdict.healthy is not None, verdict.reason

        def plan(state: ControlState, now: float) -> Change:
            if state.rollout is None or state.rollout.candidate != rollout.candidate:  # the verdict was on another
                return nothing_to_do(state)
            change = lifecycle.check_progress(state, now, "controller", verdict_reached=reached, detail=detail)
            return change or nothing_to_do(state)

        change = self._apply(plan, "progress-deadline", rollout.candidate)
        if not change.audit:
            return []
        return [f"{'aborted' if change.action == 'abort' else 'held'} {rollout.candidate}: {change.audit[-1].reason}"]

    def _plan_advance(self, candidate: str, stage_index: int) -> Plan:
        max_history = self._config().max_history

        def plan(state: ControlState, now: float) -> Change:  # only the stage the gate was asked about
            rollout = state.rollout
            if rollout is None or rollout.candidate != candidate or rollout.stage_index != stage_index:
                return nothing_to_do(state)
            return control.advance(state, now, "controller", healthy=True, max_history=max_history)

        return plan


def _plan_hold(candidate: str, reason: str) -> Plan:
    def plan(state: ControlState, now: float) -> Change:
        return control.hold(state, now, "controller", candidate=candidate, reason=reason)

    return plan


def _plan_gate_hold(candidate: str, stage_index: int, reason: str) -> Plan:
    def plan(state: ControlState, now: float) -> Change:  # nothing when stored already (maybe by another process)
        return note_gate_hold(state, candidate, stage_index, reason) or nothing_to_do(state)

    return plan


def _plan_automatic_rollback(
    version_id: str, role: str, reason: str, baking: Callable[[ControlState, float], bool]
) -> Plan:
    def plan(state: ControlState, now: float) -> Change:
        still = (
            (state.rollout is not None and state.rollout.candidate == version_id)
            if role == "candidate"
            else (state.active == version_id and baking(state, now))  # not if another process acted first
        )
        if not still:
            return nothing_to_do(state)
        return control.rollback(state, now, "controller", reason=reason, automatic=True)

    return plan


def require_thresholds(analysis: object) -> HealthThresholds:
    """``analysis`` if it is a :class:`HealthThresholds` (raising ``TypeError`` otherwise)."""
    if not isinstance(analysis, HealthThresholds):
        raise TypeError(f"analysis must be HealthThresholds, got {type(analysis).__name__}")
    return analysis


def with_analysis(plan: Plan, analysis: HealthThresholds) -> Plan:
    """``plan`` (a prepare) with per-deployment analysis settings stored on the version it stages."""
    stored = analysis.to_dict()

    def planned(state: ControlState, now: float) -> Change:
        change = plan(state, now)
        record = change.state.versions.get(change.result) if isinstance(change.result, str) else None
        if record is not None:
            change.put(replace(record, analysis=stored))
        return change

    return planned


def _plan_end_experiment(state: ControlState, now: float) -> Change:
    return control.end_experiment(state, now, "controller") or nothing_to_do(state)


def _activation_question(state: ControlState, record: VersionRecord) -> GateQuestion:
    """A gate's question before ``record`` (scheduled) is activated: the switch, or its rollout's start."""
    stages = record.strategy.stage_percentages()
    first = stages[0] if stages else 100.0
    kind = record.strategy.kind
    return GateQuestion("activation", record.version_id, state.active, kind, 0, stages, 0.0, first)


def _stage_question(state: ControlState, record: VersionRecord) -> GateQuestion:
    """A gate's question before the canary of ``record`` leaves its stage (``promotion``: the step to 100%)."""
    rollout = state.rollout
    assert rollout is not None
    strategy = record.strategy
    share = strategy.next_share_bp(rollout.stage_index)
    step = "promotion" if share is None or share >= BASIS_POINTS else "stage"
    following = 100.0 if share is None else share / 100
    stage, stages = rollout.stage_index + 1, strategy.stage_percentages()
    return GateQuestion(
        step, rollout.candidate, rollout.stable, strategy.kind, stage, stages, rollout.share_bp / 100, following
    )


def _held_schedules(state: ControlState, now: float) -> list[str]:
    return [f"{r.version_id}: {r.held}" for r in control.scheduled_due(state, now) if r.held is not None]
