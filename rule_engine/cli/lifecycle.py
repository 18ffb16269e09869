"""The operator's lifecycle commands (Argo Rollouts' vocabulary): pause, resume, abort, retry, undo, activate, cancel.

Each one runs one :class:`~rule_engine.DeploymentManager` operation with ``--by`` (who declares it),
``--reason`` (why) and the OS account and host (recorded as the audit entry's ``origin``), and prints a
line for people or one JSON object with ``--json`` (shapes in docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from rule_engine.cli._common import by_option, default_actor, json_option, managed, os_account
from rule_engine.cli.completion import complete_versions
from rule_engine.cli.deploy import parse_stages
from rule_engine.cli.output import bar, echo, emit, view_dict
from rule_engine.control.strategies import Canary, InvalidStrategyError, Strategy
from rule_engine.deployment.manager import DeploymentManager

__all__ = ["abort", "activate", "cancel", "pause", "resume", "retry", "undo"]

reason_option = click.option("--reason", default="", metavar="TEXT", help="Why (recorded in the audit trail).")
F = TypeVar("F", bound=Callable[..., None])


def _operation(fn: F) -> click.Command:
    """A lifecycle command: ``--reason``, ``--by``, ``--json`` and the click context (arguments go below it)."""
    return click.command()(reason_option(by_option(json_option(click.pass_context(fn)))))


def _who(actor: str | None, reason: str) -> dict[str, Any]:
    """The audit fields every operation takes: who declares it, why, and the OS account and host that ran it."""
    return {"actor": actor or default_actor(), "reason": reason, "origin": os_account()}


def _report(manager: DeploymentManager, **data: Any) -> dict[str, Any]:
    """``data`` with what serves now: the active version and the rollout in progress."""
    rollout = manager.get_rollout_status()
    return {
        **data,
        "active_version": manager.get_active_version_id(),
        "rollout": view_dict(rollout) if rollout else None,
    }


def _run(ctx: click.Context, as_json: bool, act: Callable[[DeploymentManager], tuple[dict[str, Any], str]]) -> None:
    """Open the store, run ``act`` (which returns the JSON data and the human line) and print."""
    with managed(ctx) as state:
        manager = state.open()
        data, line = act(manager)
        emit(as_json, data, lambda: echo(line))


@_operation
def pause(ctx: click.Context, reason: str, actor: str | None, as_json: bool) -> None:
    """Pause the canary: its stage clock stops and nothing advances it until 'rule-engine resume'."""

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        version_id = manager.pause_rollout(**_who(actor, reason))
        guard = "automatic rollback" if manager.config.auto_rollback else "a hold on an unhealthy verdict"
        data = _report(manager, paused=version_id)
        return data, f"paused the rollout of {version_id}; {guard} still protects it ('rule-engine resume' continues)"

    _run(ctx, as_json, act)


@_operation
def resume(ctx: click.Context, reason: str, actor: str | None, as_json: bool) -> None:
    """Resume a paused canary: its stage gets the time it had left when it was paused."""

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        version_id = manager.resume_rollout(**_who(actor, reason))
        data = _report(manager, resumed=version_id)
        return data, f"resumed the rollout of {version_id}; the stage clock runs again"

    _run(ctx, as_json, act)


@_operation
def abort(ctx: click.Context, reason: str, actor: str | None, as_json: bool) -> None:
    """Abort the rollout: all traffic back to the stable version; the candidate is kept as aborted."""

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        before = manager.get_rollout_status()
        stable = manager.abort_rollout(**_who(actor, reason))
        aborted = before.version_id if before else None
        data = _report(manager, aborted=aborted, state="aborted")
        return data, (
            f"aborted the rollout of {aborted}; {stable} serves all traffic "
            "('rule-engine retry' restarts it for the same keys)"
        )

    _run(ctx, as_json, act)


@_operation
@click.argument("version", required=False, default=None, shell_complete=complete_versions)
def retry(ctx: click.Context, version: str | None, reason: str, actor: str | None, as_json: bool) -> None:
    """Restart an aborted rollout (default: the last) from its first stage, for the same keys (same salt)."""

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        version_id = manager.retry_rollout(version, **_who(actor, reason))
        data = _report(manager, retried=version_id)
        rollout = manager.get_rollout_status()
        share = f" at {rollout.percentage:g}% {bar(rollout.percentage)}" if rollout else ""
        return data, f"retried the rollout of {version_id} from its first stage{share}"

    _run(ctx, as_json, act)


def _undo_strategy(stages: str | None, stage_duration: float | None) -> Strategy | None:
    if stages is None and stage_duration is None:
        return None
    try:
        return Canary.from_options(stages=parse_stages(stages), stage_duration=stage_duration)
    except InvalidStrategyError as exc:
        raise click.UsageError(str(exc)) from None


@_operation
@click.option(
    "--to",
    "to",
    default=None,
    metavar="VERSION",
    shell_complete=complete_versions,
    help="The version to make active again [default: the previous one].",
)
@click.option("--stages", default=None, metavar="10,25,50,100", help="Go back as a canary with these stages.")
@click.option("--stage-duration", type=click.FloatRange(min=0), default=None, metavar="SECONDS", help="Canary back.")
def undo(
    ctx: click.Context,
    to: str | None,
    stages: str | None,
    stage_duration: float | None,
    reason: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Make a retained version active again (default: the previous one): at once, or as a canary with --stages."""
    strategy = _undo_strategy(stages, stage_duration)

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        before = manager.get_active_version_id()
        version_id = manager.undo(to, strategy=strategy, **_who(actor, reason))
        data = _report(manager, undone_to=version_id, previous_version=before)
        if manager.get_rollout_status() is not None:
            return data, f"undo: {version_id} is rolling out again as a canary against {before}"
        return data, f"undo: {version_id} serves all traffic again (was {before})"

    _run(ctx, as_json, act)


@_operation
@click.argument("version", shell_complete=complete_versions)
@click.option("--now", "now", is_flag=True, help="Bring a scheduled version forward: swap it in now.")
@click.option("--supersede", is_flag=True, help="Roll back a rollout in progress and start this one instead.")
def activate(
    ctx: click.Context, version: str, now: bool, supersede: bool, reason: str, actor: str | None, as_json: bool
) -> None:
    """Start serving a staged VERSION by its strategy (--now: a scheduled one, ahead of its time)."""

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        manager.activate_deployment(version, now=now, supersede=supersede, **_who(actor, reason))
        info = manager.get_deployment_info(version)
        state, share = (info.state.value, info.current_percentage) if info else ("unknown", 0.0)
        data = _report(manager, version_id=version, state=state, percentage=share)
        return data, f"activated {version}: {state}, {share:g}% of traffic"

    _run(ctx, as_json, act)


@_operation
@click.argument("version", shell_complete=complete_versions)
def cancel(ctx: click.Context, version: str, reason: str, actor: str | None, as_json: bool) -> None:
    """Cancel a staged or scheduled VERSION: it will never serve."""

    def act(manager: DeploymentManager) -> tuple[dict[str, Any], str]:
        manager.cancel_deployment(version, **_who(actor, reason))
        return {"cancelled": version, "state": "cancelled"}, f"cancelled {version}: it will never serve"

    _run(ctx, as_json, act)
