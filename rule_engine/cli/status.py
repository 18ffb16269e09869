"""Commands that read the deployment state: status and history."""

from __future__ import annotations

import click

from rule_engine.cli._common import _bar, _emit, _managed, json_option
from rule_engine.clock import iso
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
    with _managed(ctx) as state:
        manager = state.open()
        active = manager.get_active_version_id()
        rollout = manager.get_rollout_status()
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        serving = {active} | ({rollout.version_id} if rollout else set())
        data = {
            "store": state.url,
            "active_version": active,
            "rollout": rollout.to_dict() if rollout else None,
            "health": {i.version_id: i.health_metrics.to_dict() for i in infos if i.version_id in serving},
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
        _emit(as_json, data, lambda: _print_status(state.url, active, rollout, infos))


def _print_status(url: str, active: str | None, rollout: RolloutStatus | None, infos: list[DeploymentInfo]) -> None:
    click.echo(f"store:   {url}")
    click.echo(f"active:  {active or '(none: nothing deployed yet)'}")
    if rollout is None:
        click.echo("rollout: none in progress")
    else:
        stage = f", stage {rollout.stage}/{len(rollout.stages)}" if rollout.stages else ""
        click.echo(f"rollout: {rollout.strategy} of {rollout.version_id}{stage} (vs {rollout.stable_version_id})")
        click.echo(f"         {_bar(rollout.percentage)} {rollout.percentage:g}% of traffic")
        if rollout.verdict.reason != rollout.holding:
            click.echo(f"         health: {rollout.verdict.reason}")
        if rollout.holding:
            click.echo(f"         holding: {rollout.holding}")
        elif rollout.next_step_at is not None:
            click.echo(f"         next step: {iso(rollout.next_step_at)} (when the controller ticks)")
    if infos:
        click.echo("versions:")
        for info in infos:
            click.echo(
                f"  {info.version_id:<44} {info.state.value:<12} {info.current_percentage:>6g}%  {_short_health(info)}"
            )


# --- history and diff -----------------------------------------------------------------------------


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Audit entries to show.")
@json_option
@click.pass_context
def history(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Versions kept in history with their state, and the audit trail of every transition."""
    with _managed(ctx) as state:
        manager = state.open()
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        audit = manager.audit_log(limit=limit)
        data = {"versions": [i.to_dict() for i in infos], "audit": [e.to_dict() for e in audit]}

        def human() -> None:
            if not infos:
                click.echo("no versions yet")
                return
            click.echo("versions (oldest first):")
            for i in infos:
                click.echo(
                    f"  {i.version_id:<44} {i.state.value:<12} {i.strategy.describe():<40} "
                    f"by {i.deployed_by}, {iso(i.created_at)}"
                )
                if i.failure_reason:
                    click.echo(f"      reason: {i.failure_reason}")
            click.echo("audit trail:")
            for e in audit:
                why = f"  ({e.reason})" if e.reason else ""
                click.echo(
                    f"  {iso(e.at)}  {e.action:<10} {e.version_id:<44} {e.from_state or '-'} -> {e.to_state}"
                    f"  by {e.actor}{why}"
                )

        _emit(as_json, data, human)
