"""``rule-engine status --watch``: a live view of what serves and why a rollout holds.

On a terminal the view is redrawn in place every ``--interval`` seconds; when stdout is not a terminal
(piped, redirected) one line is printed per change, with the time. Ctrl-C ends it with exit status 0.
``--count N`` stops after N looks (scripts, tests). It reads the store only: it never creates one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from rule_engine.cli._common import CommandFailed, managed
from rule_engine.cli.hints import cli_text
from rule_engine.cli.output import bar, clean, when
from rule_engine.control.status import scheduled_versions
from rule_engine.deployment.manager import DeploymentManager

__all__ = ["frame", "summary", "watch"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def _health(manager: DeploymentManager, version_id: str) -> str:
    info = manager.get_deployment_info(version_id)
    if info is None:
        return f"{version_id}: gone from history"
    m = info.health_metrics
    verdict = {True: "healthy", False: "UNHEALTHY", None: "no verdict"}[m.verdict]
    return f"{version_id} {info.current_percentage:g}%: {m.error_rate:.2%} errors over {m.total_evaluations:,} evaluations ({verdict})"


def frame(manager: DeploymentManager, now: float) -> list[str]:
    """The lines of one view: stage, share, time to the next step, why it holds, health per serving version."""
    active = manager.get_active_version_id()
    rollout = manager.get_rollout_status()
    lines = [f"active:  {active or '(none: nothing deployed yet)'}"]
    serving = [active] if active else []
    if rollout is None:
        lines.append("rollout: none in progress")
    else:
        serving.append(rollout.version_id)
        stage = f"stage {rollout.stage}/{len(rollout.stages)}, " if rollout.stages else ""
        lines.append(f"rollout: {rollout.strategy} of {rollout.version_id} against {rollout.stable_version_id}")
        lines.append(f"         {stage}{rollout.percentage:g}% {bar(rollout.percentage)}")
        if rollout.paused:
            lines.append(f"         PAUSED since {when(rollout.paused_at)}")
        if rollout.next_step_at is not None:
            lines.append(
                f"         next step in {max(0.0, rollout.next_step_at - now):.0f}s ({when(rollout.next_step_at)})"
            )
        if rollout.holding:
            lines.append(f"         holding: {cli_text(rollout.holding)}")
    lines.extend(f"  {_health(manager, v)}" for v in serving)
    for item in scheduled_versions(manager.state):
        held = f" (held: {cli_text(item.held)})" if item.held else ""
        lines.append(f"scheduled: {item.version_id} at {when(item.activation_time)}{held}")
    return [clean(line) for line in lines]


def summary(manager: DeploymentManager, now: float) -> str:
    """One line of the view, for output that is not a terminal (printed when it changes)."""
    active = manager.get_active_version_id()
    rollout = manager.get_rollout_status()
    parts = [f"active={active or '-'}"]
    if rollout is not None:
        stage = f" stage {rollout.stage}/{len(rollout.stages)}" if rollout.stages else ""
        parts.append(f"rollout={rollout.version_id}{stage} {rollout.percentage:g}%")
        if rollout.paused:
            parts.append("paused")
        if rollout.holding:
            parts.append(f"holding: {cli_text(rollout.holding)}")
    for version_id in [v for v in (active, rollout.version_id if rollout else None) if v]:
        info = manager.get_deployment_info(version_id)
        if info is not None:
            m = info.health_metrics
            parts.append(f"{version_id}: {m.error_rate:.2%} errors / {m.total_evaluations:,} evals")
    parts.extend(f"scheduled={s.version_id}@{when(s.activation_time)}" for s in scheduled_versions(manager.state))
    return clean("; ".join(parts))


def watch(ctx: click.Context, interval: float, count: int | None) -> None:
    """Look every ``interval`` seconds until Ctrl-C (exit 0) or ``count`` looks."""
    tty = sys.stdout.isatty()
    with managed(ctx) as state:
        url = state.url
        if url.startswith("sqlite:///") and not _exists(url):
            raise CommandFailed(f"no store at {url}: nothing is deployed there yet ('rule-engine deploy BUNDLE')")
        manager = state.open()
        last: str | None = None
        looks = 0
        try:
            while count is None or looks < count:
                looks += 1
                manager.refresh()
                now = time.time()
                if tty:
                    header = f"rule-engine status --watch  {url}  {when(now)}  (Ctrl-C to exit)"
                    click.echo(_CLEAR + "\n".join([clean(header), *frame(manager, now)]))
                else:
                    line = summary(manager, now)
                    if line != last:
                        click.echo(f"{when(now)}  {line}")
                        last = line
                if count is None or looks < count:
                    time.sleep(interval)
        except KeyboardInterrupt:
            if tty:
                click.echo("")
            return


def _exists(url: str) -> bool:
    return Path(url[len("sqlite:///") :].partition("?")[0]).is_file()
