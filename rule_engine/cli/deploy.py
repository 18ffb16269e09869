"""Commands that change what serves: deploy, advance, promote, rollback, conclude."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from rule_engine.bundle.models import RuleBundle, load_bundle
from rule_engine.bundle.signing import (
    Signature,
    find_signature,
)
from rule_engine.cli._common import CommandFailed, _bar, _default_actor, _emit, _managed, by_option, json_option
from rule_engine.control.strategies import ABTest, BlueGreen, Canary, InvalidStrategyError, Scheduled, Strategy
from rule_engine.errors import BundleTrustError, RuleEngineError

# --- deploy ----------------------------------------------------------------------------------------


def _parse_stages(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected percentages like 10,25,50,100, got {value!r}", param_hint="--stages"
        ) from None


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise click.BadParameter(f"{value!r} is not a time", param_hint="--at")
        return seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither ISO 8601 (e.g. 2030-01-01T09:00:00+00:00) nor unix seconds", param_hint="--at"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no timezone; add one, e.g. {text}+00:00", param_hint="--at")
    return moment.timestamp()


def _build_strategy(
    strategy: str | None,
    stages: str | None,
    stage_duration: float | None,
    split_ratio: float | None,
    test_duration: float | None,
    at: str | None,
) -> Strategy:
    canary_opts = stages is not None or stage_duration is not None
    ab_opts = split_ratio is not None or test_duration is not None
    if strategy is None:
        strategy = (
            "scheduled" if at is not None else "canary" if canary_opts else "ab-test" if ab_opts else "blue-green"
        )
    given = {
        "--stages/--stage-duration": canary_opts and strategy != "canary",
        "--split-ratio/--test-duration": ab_opts and strategy != "ab-test",
        "--at": at is not None and strategy != "scheduled",
    }
    wrong = [name for name, bad in given.items() if bad]
    if wrong:
        raise click.UsageError(f"{', '.join(wrong)} do(es) not apply to --strategy {strategy}")
    try:
        if strategy == "canary":
            kwargs: dict[str, Any] = {}
            parsed = _parse_stages(stages)
            if parsed is not None:
                kwargs["stages"] = parsed
            if stage_duration is not None:
                kwargs["stage_duration_secs"] = stage_duration
            return Canary(**kwargs)
        if strategy == "ab-test":
            ab: dict[str, Any] = {}
            if split_ratio is not None:
                ab["split_ratio"] = split_ratio
            if test_duration is not None:
                ab["test_duration_secs"] = test_duration
            return ABTest(**ab)
        if strategy == "scheduled":
            when = _parse_time(at)
            if when is None:
                raise click.UsageError("--strategy scheduled needs --at TIME")
            return Scheduled(when)
    except InvalidStrategyError as exc:
        raise click.UsageError(str(exc)) from None
    return BlueGreen()


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option(
    "--strategy",
    type=click.Choice(["blue-green", "canary", "ab-test", "scheduled"]),
    default=None,
    help="How traffic moves [default: blue-green, or implied by the options below].",
)
@click.option("--stages", default=None, metavar="10,25,50,100", help="Canary stages in percent, ending at 100.")
@click.option(
    "--stage-duration", type=float, default=None, metavar="SECONDS", help="Canary: how long each stage holds."
)
@click.option(
    "--split-ratio", type=float, default=None, metavar="R", help="A/B test: share kept by the stable version (A)."
)
@click.option("--test-duration", type=float, default=None, metavar="SECONDS", help="A/B test: how long it runs.")
@click.option("--at", default=None, metavar="TIME", help="Scheduled: ISO 8601 with timezone, or unix seconds.")
@click.option("--supersede", is_flag=True, help="Roll back a rollout in progress and start this one instead.")
@by_option
@json_option
@click.pass_context
def deploy(
    ctx: click.Context,
    bundle: str,
    strategy: str | None,
    stages: str | None,
    stage_duration: float | None,
    split_ratio: float | None,
    test_duration: float | None,
    at: str | None,
    supersede: bool,
    actor: str | None,
    as_json: bool,
) -> None:
    """Prepare a bundle as a new version and start serving it by its strategy (scheduled: just prepare)."""
    chosen = _build_strategy(strategy, stages, stage_duration, split_ratio, test_duration, at)
    who = actor or _default_actor()
    with _managed(ctx) as state:
        trust = state.trust()
        source: Path | RuleBundle = Path(bundle)
        signature: Signature | None = None
        if trust is not None:  # refuse an untrusted bundle before the store is even opened
            source = load_bundle(bundle)
            try:
                signature = find_signature(bundle)
                trust.verify(source, signature)
            except BundleTrustError as exc:
                raise exc.with_source(bundle) from None
        manager = state.open(trust=trust) if trust is not None else state.open()
        version_id = manager.prepare_deployment(source, chosen, deployed_by=who, signature=signature)
        if not isinstance(chosen, Scheduled):
            try:
                manager.activate_deployment(version_id, actor=who, supersede=supersede)
            except RuleEngineError as exc:
                raise CommandFailed(f"{exc} (version {version_id} is prepared and left staged)") from exc
        info = manager.get_deployment_info(version_id)
        assert info is not None
        data = {
            "version_id": version_id,
            "state": info.state.value,
            "strategy": chosen.to_dict(),
            "percentage": info.current_percentage,
            "store": state.url,
        }

        def human() -> None:
            click.echo(f"deployed {version_id}")
            click.echo(f"  strategy: {chosen.describe()}")
            click.echo(f"  state:    {info.state.value}, {info.current_percentage:g}% of traffic")
            if isinstance(chosen, Scheduled):
                click.echo("  the controller ('rule-engine controller') activates it when due")
            elif isinstance(chosen, Canary):
                click.echo("  the controller advances it stage by stage while it stays healthy")

        _emit(as_json, data, human)


# --- control operations -------------------------------------------------------------------------------


@click.command()
@by_option
@json_option
@click.pass_context
def advance(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Move the canary to its next stage if the current one is due (and the candidate not unhealthy)."""
    with _managed(ctx) as state:
        manager = state.open()
        moved = manager.advance_rollout(actor=actor or _default_actor())
        rollout = manager.get_rollout_status()
        active = manager.get_active_version_id()
        data = {
            "advanced": moved,
            "active_version": active,
            "rollout": rollout.to_dict() if rollout else None,
        }

        def human() -> None:
            if rollout is None:
                click.echo(f"rollout complete: {active} serves all traffic")
            elif moved:
                click.echo(f"advanced {rollout.version_id} to {rollout.percentage:g}% {_bar(rollout.percentage)}")
            else:
                click.echo(f"not advanced: {rollout.holding or rollout.verdict.reason}")

        _emit(as_json, data, human)


@click.command()
@by_option
@json_option
@click.pass_context
def promote(ctx: click.Context, actor: str | None, as_json: bool) -> None:
    """Finish the canary now: the candidate takes all traffic."""
    with _managed(ctx) as state:
        version_id = state.open().promote(actor=actor or _default_actor())
        _emit(
            as_json,
            {"version_id": version_id, "active_version": version_id, "state": "active"},
            lambda: click.echo(f"promoted {version_id}: it serves all traffic"),
        )


@click.command()
@click.option("--reason", default="manual rollback", help="Why (recorded in the audit trail).")
@by_option
@json_option
@click.pass_context
def rollback(ctx: click.Context, reason: str, actor: str | None, as_json: bool) -> None:
    """Return traffic to the stable version (during a rollout) or to the previous version."""
    with _managed(ctx) as state:
        manager = state.open()
        before = manager.get_rollout_status()
        rolled = before.version_id if before else manager.get_active_version_id()
        serving = manager.rollback(actor=actor or _default_actor(), reason=reason)
        _emit(
            as_json,
            {"rolled_back": rolled, "active_version": serving},
            lambda: click.echo(f"rolled back {rolled}; {serving} serves all traffic"),
        )


@click.command()
@click.argument("winner")
@by_option
@json_option
@click.pass_context
def conclude(ctx: click.Context, winner: str, actor: str | None, as_json: bool) -> None:
    """End the A/B test: WINNER (the A or B version id) serves all traffic."""
    with _managed(ctx) as state:
        version_id = state.open().conclude_experiment(winner, actor=actor or _default_actor())
        _emit(
            as_json,
            {"winner": version_id, "active_version": version_id},
            lambda: click.echo(f"concluded the A/B test: {version_id} serves all traffic"),
        )
