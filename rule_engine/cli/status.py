"""Commands that read the deployment state: status and history."""

from __future__ import annotations

import click

from rule_engine.cli._common import json_option, managed
from rule_engine.cli.hints import cli_text
from rule_engine.cli.output import bar, describe, echo, emit, view_dict, when
from rule_engine.control.status import DeploymentInfo, RolloutStatus

# --- status ----------------------------------------------------------------------------------------


def _short_health(info: DeploymentInfo) -> str:
    m = info.health_metrics
    verdict = {True: "healthy", False: "UNHEALTHY", None: "no verdict"}[m.verdict]
    return f"{m.total_evaluations:,} evals, {m.error_rate:.1%} errors, {verdict}"


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """What serves now, the rollout in progress (as a bar, and why it holds), and health per version."""
    with managed(ctx) as state:
        manager = state.open(create=False)
        active = manager.get_active_version_id()
        rollout = manager.get_rollout_status()
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        serving = {active} | ({rollout.version_id} if rollout else set())
        data = {
            "store": state.shown_url,
            "active_version": active,
            "rollout": view_dict(rollout) if rollout else None,
            "health": {i.version_id: view_dict(i.health_metrics) for i in infos if i.version_id in serving},
            "versions": [
                {
                    "version_id": i.version_id,
                    "state": i.state.value,
                    "percentage": i.current_percentage,
                    "strategy": i.strategy.kind,
                    "healthy": i.health_metrics.verdict,
                }
                for i in infos
            ],
        }
        emit(as_json, data, lambda: _print_status(state.shown_url, active, rollout, infos))


def _print_status(url: str, active: str | None, rollout: RolloutStatus | None, infos: list[DeploymentInfo]) -> None:
    echo(f"store:   {url}")
    echo(f"active:  {active or '(none: nothing deployed yet)'}")
    if rollout is None:
        echo("rollout: none in progress")
    else:
        stage = f"stage {rollout.stage}/{len(rollout.stages)}, " if rollout.stages else ""
        echo(f"rollout: {rollout.strategy} of {rollout.version_id}")
        echo(f"         {stage}against {rollout.stable_version_id}")
        echo(f"         {bar(rollout.percentage)} {rollout.percentage:g}% of traffic")
        if rollout.verdict.reason != rollout.holding:
            echo(f"         health: {rollout.verdict.reason}")
        if rollout.holding:
            echo(f"         holding: {cli_text(rollout.holding)}")
        elif rollout.next_step_at is not None:
            echo(f"         next step: {when(rollout.next_step_at)} (when the controller ticks)")
    if infos:
        echo("versions:")
        for info in infos:
            echo(f"  {info.version_id}  {info.state.value}, {info.current_percentage:g}%")
            echo(f"      {_short_health(info)}")


# --- history ---------------------------------------------------------------------------------------


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Audit entries to show.")
@json_option
@click.pass_context
def history(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Versions kept in history with their state, and the audit trail of every transition."""
    with managed(ctx) as state:
        manager = state.open(create=False)
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        audit = manager.audit_log(limit=limit)
        data = {"versions": [view_dict(i) for i in infos], "audit": [view_dict(e) for e in audit]}

        def human() -> None:
            if not infos:
                echo("no versions yet")
                return
            echo("versions (oldest first):")
            for i in infos:
                echo(f"  {i.version_id}  {i.state.value}")
                echo(f"      {describe(i.strategy)}; by {i.deployed_by}, {when(i.created_at)}")
                if i.failure_reason:
                    echo(f"      reason: {i.failure_reason}")
            echo("audit trail:")
            for e in audit:
                why = f" ({e.reason})" if e.reason else ""
                echo(f"  {when(e.at)}  {e.action}  {e.version_id}")
                echo(f"      {e.from_state or '-'} -> {e.to_state} by {e.actor}{why}")

        emit(as_json, data, human)
