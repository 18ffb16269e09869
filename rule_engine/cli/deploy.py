"""Commands that change what serves: deploy, advance, promote, rollback, conclude."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from rule_engine.analysis.events import read_events
from rule_engine.analysis.replay import replay_gate
from rule_engine.bundle.models import load_bundle
from rule_engine.bundle.signing import find_signature
from rule_engine.cli._common import CommandFailed, by_option, default_actor, json_option, managed, os_account
from rule_engine.cli.analysis_options import analysis_options, thresholds_from
from rule_engine.cli.hints import cli_message, cli_text
from rule_engine.cli.output import bar, describe, echo, emit, view_dict, when
from rule_engine.cli.shadow_options import SHADOW_NOTE, shadow_cli_options, shadowed
from rule_engine.cli.targeting import scope_options, scoped
from rule_engine.clock import LAST_RENDERABLE_TIME
from rule_engine.control.status import RolloutStatus, scheduled_versions
from rule_engine.control.strategies import InvalidStrategyError, Strategy, strategy_for_cli, strategy_kinds
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.errors import BundleValidationError, NoPreviousVersionError, RuleEngineError

# --- deploy ----------------------------------------------------------------------------------------

FC = TypeVar("FC", bound=Callable[..., Any])


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback: refuse inf, nan and negative numbers, naming the option."""
    if value is not None and (not math.isfinite(value) or value < 0):
        raise click.BadParameter(f"{value!r}: expected a finite number, at least 0")
    return value


def _number_option(name: str, metavar: str, help_text: str) -> Callable[[FC], FC]:
    """An option taking a finite number (inf and nan are refused naming the option)."""
    return click.option(name, type=float, callback=_finite, default=None, metavar=metavar, help=help_text)


def parse_stages(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    parts = [part.strip() for part in value.split(",")]
    try:
        if any(not part for part in parts):
            raise ValueError("an empty stage")
        stages = tuple(float(part) for part in parts)
        if not all(math.isfinite(stage) for stage in stages):
            raise ValueError("a stage that is not a finite number")
    except ValueError:
        raise click.BadParameter(
            f"expected percentages separated by single commas, like 10,25,50,100, got {value!r}",
            param_hint="--stages",
        ) from None
    return stages


def _parse_time(value: str | None) -> float | None:
    """Unix seconds from ``--at`` (ISO 8601 with a timezone, or unix seconds), refused unless renderable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso_seconds(value, text)
    if not math.isfinite(seconds) or not 0 <= seconds < LAST_RENDERABLE_TIME:
        raise click.BadParameter(f"{value!r} is not a time between 1970 and 9999", param_hint="--at")
    if seconds < time.time():
        raise click.BadParameter(
            f"{value!r} is in the past ({when(seconds)}); to serve it now, deploy without --at", param_hint="--at"
        )
    return seconds


def _iso_seconds(value: str, text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither ISO 8601 (e.g. 2030-01-01T09:00:00+00:00) nor unix seconds", param_hint="--at"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; add one, e.g. {text}+00:00", param_hint="--at")
    try:
        return moment.timestamp()
    except (OverflowError, ValueError, OSError):
        return math.inf


#: The CLI option table: how each strategy option's text is parsed (others pass through as given).
_OPTION_PARSERS: dict[str, Callable[[Any], Any]] = {"stages": parse_stages, "at": _parse_time}


def _build_strategy(strategy: str | None, **options: Any) -> Strategy:
    given = {name for name, value in options.items() if value is not None}
    try:
        chosen = strategy_for_cli(strategy, given)
        parsed = {name: _OPTION_PARSERS.get(name, _same)(options[name]) for name in chosen.cli_options}
        return chosen.from_options(**parsed)
    except InvalidStrategyError as exc:
        raise click.UsageError(str(exc)) from None


def _same(value: Any) -> Any:
    return value


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option(
    "--strategy",
    type=click.Choice(list(strategy_kinds())),
    default=None,
    help="How traffic moves [default: blue-green, or implied by the options below].",
)
@click.option("--stages", default=None, metavar="10,25,50,100", help="Canary stages in percent, ending at 100.")
@_number_option("--stage-duration", "SECONDS", "Canary: how long each stage holds.")
@_number_option("--split-ratio", "R", "A/B test: share kept by the stable version (A).")
@_number_option("--test-duration", "SECONDS", "A/B test: how long it runs.")
@click.option("--at", default=None, metavar="TIME", help="Scheduled: ISO 8601 with timezone, or unix seconds.")
@scope_options
@shadow_cli_options
@click.option("--supersede", is_flag=True, help="Roll back a rollout in progress and start this one instead.")
@click.option(
    "--replay", "replay_events", default=None, metavar="EVENTS", help="Gate: replay these events first (JSONL, gz, -)."
)
@click.option(
    "--max-changed-rate",
    type=click.FloatRange(0, 1),
    default=None,
    help="With --replay: refuse (nothing staged) when more decisions change than this share [default: 0].",
)
@click.option(
    "--progress-deadline",
    type=click.FloatRange(min=0, min_open=True, max=10**9),
    default=None,
    metavar="SECONDS",
    help="A rollout stage with no health verdict for this long holds, saying so (Argo's progressDeadlineSeconds).",
)
@click.option("--progress-deadline-abort", is_flag=True, help="Abort the rollout instead when the deadline passes.")
@click.option(
    "--replace-policy",
    is_flag=True,
    help="Deploy a bundle of another policy (bundle_id) than the one serving, replacing it.",
)
@analysis_options
@click.option(
    "--refuse-downgrade",
    is_flag=True,
    help="With --trust: refuse a bundle whose version is not newer than the active one (same bundle id).",
)
@by_option
@json_option
@click.pass_context
def deploy(
    ctx: click.Context,
    /,
    bundle: str,
    strategy: str | None,
    stages: str | None,
    stage_duration: float | None,
    split_ratio: float | None,
    test_duration: float | None,
    at: str | None,
    agents: str | None,
    flows: str | None,
    supersede: bool,
    replay_events: str | None,
    max_changed_rate: float | None,
    progress_deadline: float | None,
    progress_deadline_abort: bool,
    replace_policy: bool,
    refuse_downgrade: bool,
    actor: str | None,
    as_json: bool,
    **analysis: Any,
) -> None:
    """Prepare a bundle as a new version and start serving it by its strategy (scheduled: just prepare)."""
    if max_changed_rate is not None and replay_events is None:
        raise click.UsageError("--max-changed-rate goes with --replay EVENTS")
    chosen = _build_strategy(
        strategy,
        stages=stages,
        stage_duration=stage_duration,
        split_ratio=split_ratio,
        test_duration=test_duration,
        at=at,
    )
    chosen = scoped(chosen, agents, flows)  # --agents/--flows (cli/targeting.py)
    chosen = shadowed(chosen, analysis)  # --shadow and its thresholds (cli/shadow_options.py), taken out of analysis
    who = actor or default_actor()
    if progress_deadline_abort and progress_deadline is None:
        raise click.UsageError("--progress-deadline-abort needs --progress-deadline SECONDS")
    with managed(ctx) as state:
        trust = state.trust(refuse_downgrade=refuse_downgrade)
        if refuse_downgrade and trust is None:
            raise click.UsageError("--refuse-downgrade needs a trust policy (--trust FILE or $RULE_ENGINE_TRUST)")
        source = load_bundle(bundle)
        try:
            signature = find_signature(bundle)
        except BundleValidationError as exc:
            raise exc.with_source(bundle) from None
        manager = state.open(trust=trust) if trust is not None else state.open()
        if replay_events is not None:  # the replay gate: refuse before anything is staged
            active = manager.get_active_version_id()
            baseline = manager.bundle_of(active) if active is not None else None
            replay_gate(source, baseline, read_events(replay_events), max_changed_rate or 0.0)
        try:
            # the manager checks the signature against its trust policy: the one place trust is enforced
            thresholds = thresholds_from(manager.config.thresholds, analysis)
            version_id = manager.prepare_deployment(
                source,
                chosen,
                who,
                signature=signature,
                origin=os_account(),
                analysis=thresholds,
                replace_policy=replace_policy,
            )
        except BundleValidationError as exc:
            raise exc.with_source(bundle) from None
        if chosen.activates_at() is None:  # scheduled: the controller activates it
            try:
                manager.activate_deployment(
                    version_id,
                    actor=who,
                    origin=os_account(),
                    supersede=supersede,
                    progress_deadline=progress_deadline,
                    progress_deadline_abort=progress_deadline_abort,
                )
            except RuleEngineError as exc:
                raise CommandFailed(f"{cli_message(exc)} (version {version_id} is prepared and left staged)") from exc
        info = manager.get_deployment_info(version_id)
        assert info is not None
        signer = f"{signature.alg}:{signature.key_id}" if trust is not None and signature is not None else None
        warnings = _pending_schedules(manager, version_id)
        data = {
            "version_id": version_id,
            "state": info.state.value,
            "strategy": chosen.to_dict(),
            "percentage": info.current_percentage,
            "store": state.shown_url,
            "signed_by": signer,
            "by": who,
            "os_account": os_account(),
            "progress_deadline_secs": progress_deadline,
            "progress_deadline_abort": progress_deadline_abort,
            "warnings": warnings,
        }

        def human() -> None:
            echo(f"deployed {version_id}")
            echo(f"  strategy: {describe(chosen)}")
            echo(f"  state:    {info.state.value}, {info.current_percentage:g}% of traffic")
            if signer is not None:
                echo(f"  signed:   by {signer} (trusted)")
            if chosen.cli_note:
                echo(f"  {chosen.cli_note}")
            if getattr(chosen, "shadow", None) is not None:
                echo(f"  {SHADOW_NOTE}")
            for warning in warnings:
                echo(f"warning: {warning}", err=True)

        emit(as_json, data, human)


def _pending_schedules(manager: DeploymentManager, deployed: str) -> list[str]:
    """A warning per other scheduled version still pending: it will not override this deploy (D16)."""
    return [
        f"{s.version_id} is scheduled for {when(s.activation_time)}; it will not override a version activated "
        f"after it was scheduled (the controller holds it): 'rule-engine cancel {s.version_id}' drops it"
        for s in scheduled_versions(manager.state)
        if s.version_id != deployed
    ]


# --- control operations -------------------------------------------------------------------------------


def _not_advanced(rollout: RolloutStatus, now: float) -> str:
    """Why ``advance`` did not move: the stage is not due yet (and when it is), or what holds it."""
    unhealthy = rollout.verdict.healthy is False
    due = rollout.next_step_at
    if rollout.stages and due is not None and now < due and not unhealthy:
        stage = f"stage {rollout.stage}/{len(rollout.stages)} ({rollout.percentage:g}%)"
        return (
            f"not advanced: {stage} is not due yet; it is due at {when(due)}, in {due - now:.0f}s "
            f"(health so far: {rollout.verdict.reason})"
        )
    return f"not advanced: {cli_text(rollout.holding or rollout.verdict.reason)}"


@click.command()
@by_option
@json_option
@click.pass_context
def advance(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Move the canary to its next stage if the current one is due (and the candidate not unhealthy)."""
    with managed(ctx) as state:
        manager = state.open()
        moved = manager.advance_rollout(actor=actor or default_actor(), origin=os_account())
        rollout = manager.get_rollout_status()
        active = manager.get_active_version_id()
        now = time.time()
        data = {
            "advanced": moved,
            "active_version": active,
            "rollout": view_dict(rollout) if rollout else None,
        }

        def human() -> None:
            if rollout is None:
                echo(f"rollout complete: {active} serves all traffic")
            elif moved:
                echo(f"advanced {rollout.version_id}")
                echo(f"  to {rollout.percentage:g}% {bar(rollout.percentage)}")
            elif rollout.paused:
                echo(f"not advanced: the rollout of {rollout.version_id} is paused; 'rule-engine resume' continues it")
            else:
                echo(_not_advanced(rollout, now))

        emit(as_json, data, human)


@click.command()
@by_option
@json_option
@click.pass_context
def promote(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Finish the canary now: the candidate takes all traffic."""
    with managed(ctx) as state:
        version_id = state.open().promote(actor=actor or default_actor(), origin=os_account())
        emit(
            as_json,
            {"version_id": version_id, "active_version": version_id, "state": "active"},
            lambda: echo(f"promoted {version_id}: it serves all traffic"),
        )


@click.command()
@click.option("--reason", default="manual rollback", help="Why (recorded in the audit trail).")
@by_option
@json_option
@click.pass_context
def rollback(ctx: click.Context, reason: str, actor: str | None, as_json: bool) -> None:
    """Return traffic to the stable version (during a rollout) or to the previous version."""
    with managed(ctx) as state:
        manager = state.open()
        before = manager.get_rollout_status()
        rolled = before.version_id if before else manager.get_active_version_id()
        try:
            serving = manager.rollback(actor=actor or default_actor(), reason=reason, origin=os_account())
        except NoPreviousVersionError:
            raise CommandFailed(_no_rollback_target(manager)) from None
        emit(
            as_json,
            {"rolled_back": rolled, "active_version": serving},
            lambda: echo(f"rolled back {rolled}; {serving} serves all traffic"),
        )


def _no_rollback_target(manager: DeploymentManager) -> str:
    active = manager.get_active_version_id()
    if active is None:
        return "cannot roll back: nothing is active, so there is no previous version to return to"
    others = [v for v in manager.get_deployment_history() if v != active]
    kept = f"the other retained versions ({', '.join(others)}) cannot take over" if others else "no other version"
    return (
        f"cannot roll back: {active} is active and there is no rollback target (the version it replaced is "
        f"gone or never existed; {kept}); to serve another version, deploy its bundle: 'rule-engine deploy BUNDLE'"
    )


@click.command()
@click.argument("winner")
@by_option
@json_option
@click.pass_context
def conclude(ctx: click.Context, winner: str, actor: str | None, as_json: bool) -> None:
    """End the A/B test: WINNER (the A or B version id) serves all traffic."""
    with managed(ctx) as state:
        version_id = state.open().conclude_experiment(winner, actor=actor or default_actor(), origin=os_account())
        emit(
            as_json,
            {"winner": version_id, "active_version": version_id},
            lambda: echo(f"concluded the A/B test: {version_id} serves all traffic"),
        )
