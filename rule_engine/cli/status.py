"""Commands that read the deployment state: status (and status --watch), experiment and history."""

from __future__ import annotations

import click

from rule_engine.cli._common import json_option, managed
from rule_engine.cli.hints import cli_text
from rule_engine.cli.live import watch
from rule_engine.cli.output import bar, describe, echo, emit, view_dict, when
from rule_engine.cli.shadow_options import shadow_line
from rule_engine.cli.targeting import scope_text
from rule_engine.control.status import DeploymentInfo, RolloutStatus, ScheduledVersion, scheduled_versions
from rule_engine.observability.views import history_view, status_view

# --- status ----------------------------------------------------------------------------------------


def _short_health(info: DeploymentInfo) -> str:
    m = info.health_metrics
    verdict = {True: "healthy", False: "UNHEALTHY", None: "no verdict"}[m.verdict]
    return f"{m.total_evaluations:,} evals, {m.error_rate:.1%} errors, {verdict}"


@click.command()
@click.option(
    "--watch",
    "live",
    is_flag=True,
    help="Keep watching: refresh in place on a terminal, a line per change when piped; Ctrl-C exits.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=3600),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch: how often to look.",
)
@click.option(
    "--count", type=click.IntRange(min=1), default=None, metavar="N", help="With --watch: stop after N looks."
)
@json_option
@click.pass_context
def status(ctx: click.Context, live: bool, interval: float, count: int | None, as_json: bool) -> None:
    """What serves now, the rollout in progress (as a bar, and why it holds), and health per version."""
    if live:
        if as_json:
            raise click.UsageError("--watch prints for people; use 'rule-engine status --json' in a loop for JSON")
        watch(ctx, interval, count)
        return
    with managed(ctx) as state:
        manager = state.open(create=False)
        active = manager.get_active_version_id()
        rollout = manager.get_rollout_status()
        infos = [i for i in (manager.get_deployment_info(v) for v in manager.get_deployment_history()) if i]
        scheduled = scheduled_versions(manager.state)
        data = status_view(manager, state.shown_url, infos)  # the one JSON shape of `status --json` and the API
        fleet = str(data["fleet"]["summary"])
        where = state.shown_url + (f" (deployment {data['deployment']})" if data["deployment"] else "")
        emit(as_json, data, lambda: _print_status(where, active, rollout, infos, scheduled, fleet))


def _print_status(
    url: str,
    active: str | None,
    rollout: RolloutStatus | None,
    infos: list[DeploymentInfo],
    scheduled: list[ScheduledVersion],
    fleet: str,
) -> None:
    echo(f"store:   {url}")
    echo(f"active:  {active or '(none: nothing deployed yet)'}")
    echo(f"fleet:   {fleet}")
    if rollout is None:
        echo("rollout: none in progress")
    else:
        stage = f"stage {rollout.stage}/{len(rollout.stages)}, " if rollout.stages else ""
        stage = f"shadow phase, then {stage or 'the switch, '}" if rollout.shadow is not None else stage
        echo(f"rollout: {rollout.strategy} of {rollout.version_id}")
        echo(f"         {stage}against {rollout.stable_version_id}")
        echo(f"         {bar(rollout.percentage)} {rollout.percentage:g}% of traffic")
        if rollout.paused:
            echo(f"         PAUSED since {when(rollout.paused_at)} ('rule-engine resume' continues it)")
        if rollout.agents or rollout.flows or rollout.pins:  # targeting (docs/routing.md)
            echo(f"         scope: {scope_text(rollout)}")
        if rollout.shadow is not None:  # the shadow phase (docs/safety.md, section 7)
            echo(f"         {shadow_line(rollout.shadow)}")
        elif rollout.verdict.reason != rollout.holding:
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
    for item in scheduled:
        held = f"; HELD: {cli_text(item.held)}" if item.held else ""
        echo(f"scheduled: {item.version_id} at {when(item.activation_time)}{held}")


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
        data = history_view(manager, limit, infos)  # the one JSON shape of `history --json` and the API

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
                origin = f" ({e.origin})" if e.origin else ""
                echo(f"      {e.from_state or '-'} -> {e.to_state} by {e.actor}{origin}{why}")

        emit(as_json, data, human)


# --- experiment ------------------------------------------------------------------------------------


@click.command()
@json_option
@click.pass_context
def experiment(ctx: click.Context, as_json: bool) -> None:
    """The A/B test report: per-arm figures, p-value of the error-rate difference, and the verdict."""
    with managed(ctx) as state:
        report = state.open().get_experiment_report()
        data = view_dict(report)

        def human() -> None:
            echo(
                f"A/B test since {when(report.started_at)}"
                + (f", ended {when(report.ended_at)}" if report.ended_at else "")
            )
            for arm in (report.a, report.b):
                echo(f"  {arm.variant} {arm.version_id}  {arm.traffic_share:.0%} of traffic")
                echo(
                    f"      {arm.evaluations:,} evaluations, {arm.errors:,} errors ({arm.error_rate:.2%}), "
                    f"{arm.timeouts:,} timeouts, p99 {_micros(arm.p99_latency_us)}"
                )
                fallbacks = getattr(arm, "fallbacks", None)
                if fallbacks is not None:
                    echo(f"      {fallbacks:,} fallbacks (answered by A, counted apart)")
                if arm.decisions:
                    echo("      decisions: " + ", ".join(f"{k} {v:,}" for k, v in arm.decisions.items()))
            echo(
                f"p-value {report.p_value:.3g} (z {report.z_score:.2f}): {_verdict(report.significant, report.a.error_rate, report.b.error_rate, report.alpha)}"
            )
            echo("end it with 'rule-engine conclude WINNER'")

        emit(as_json, data, human)


def _micros(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}us"


def _verdict(significant: bool, a_rate: float, b_rate: float, alpha: float) -> str:
    if not significant:
        return f"no significant difference in error rate at alpha {alpha}"
    return f"B has {'more' if b_rate > a_rate else 'fewer'} errors than A (significant at alpha {alpha})"
