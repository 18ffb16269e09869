"""Long-running commands: the controller loop and the demo."""

from __future__ import annotations

import json
import os
import select
import signal
import stat
import sys
import threading
import time
from types import FrameType
from typing import Any

import click

from rule_engine.cli._common import CommandFailed, json_option, managed
from rule_engine.cli.analysis_options import analysis_options, thresholds_from
from rule_engine.cli.hints import cli_text
from rule_engine.cli.output import clean, echo, when
from rule_engine.control.status import TickReport
from rule_engine.errors import RuleEngineError

NOTIFY_ON_EXIT_SECS = 5.0


def stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reader closed it (``controller | head -1``): nothing printed is read."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode) or not hasattr(select, "poll"):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # not a real file (CliRunner), or closed
        return False


# --- controller ---------------------------------------------------------------------------------------


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True, metavar="SECONDS")
@click.option("--once", is_flag=True, help="Tick once and exit (for cron).")
@click.option(
    "--auto-rollback/--no-auto-rollback", default=True, show_default=True, help="Roll back unhealthy versions."
)
@click.option("--webhooks", "webhooks_file", default=None, metavar="FILE", help="Webhooks and gates (JSON).")
@analysis_options
@json_option
@click.pass_context
def controller(
    ctx: click.Context,
    /,
    interval: float,
    once: bool,
    auto_rollback: bool,
    webhooks_file: str | None,
    as_json: bool,
    **analysis: Any,
) -> None:
    """Run the controller: tick() every INTERVAL (scheduled activations, canary stages, rollbacks) until stopped.

    Ticks every deployment in the store (each in turn), or only the one --deployment names.
    """
    from rule_engine.observability.gates import install_gates
    from rule_engine.observability.webhooks import Notifier, load_webhooks

    stop = threading.Event()
    hooks = load_webhooks(webhooks_file) if webhooks_file else []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with managed(ctx) as state:
        configured: set[int] = set()  # managers (by identity: an unbound one is named by its first commit)
        notifiers: list[Notifier] = []

        def managers() -> dict[str, Any]:
            """Every deployment to tick (re-listed each tick: a deployment added meanwhile joins)."""
            found = state.open_each(follow=not once, auto_rollback=auto_rollback)
            for name, manager in found.items():
                if id(manager) not in configured:
                    configured.add(id(manager))
                    thresholds = thresholds_from(manager.config.thresholds, analysis)
                    if thresholds is not None:  # defaults for versions deployed without their own analysis settings
                        manager.configure(thresholds=thresholds)
                    install_gates(manager, hooks, name or "default")  # gate webhooks: asked before each automatic step
                    if hooks:
                        notifiers.append(Notifier(hooks, deployment=name or "default").attach(manager))
            return found

        ticking = managers()
        previous: dict[signal.Signals, Any] = {}
        if not once and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            if not as_json:
                pace = "one tick" if once else f"ticking every {interval:g}s (Ctrl-C to stop)"
                which = f" ({', '.join(n for n in ticking if n)})" if len(ticking) > 1 else ""
                echo(f"controller on {state.shown_url}{which}, {pace}")
            last_holding: dict[str, tuple[str, ...]] = {}
            ticks = 0
            while True:
                ticks += 1
                if ticks > 1 and state.deployment is None:
                    ticking = _relisted(managers, ticking)
                for name, manager in ticking.items():
                    report = _tick(manager, once)
                    now = when(time.time())
                    label = f"[{name}] " if len(ticking) > 1 else ""
                    if as_json:
                        line = {"time": now, "deployment": name or None, "actions": list(report.actions)}
                        click.echo(json.dumps({**line, "holding": list(report.holding)}))
                    else:
                        for action in report.actions:
                            echo(f"{now}  {label}{action}")
                        if report.holding != last_holding.get(name, ()):
                            for why in report.holding:
                                echo(f"{now}  {label}holding {cli_text(why)}")
                    last_holding[name] = report.holding
                if stdout_reader_gone():  # nobody reads what we print: stop as if signalled, quietly
                    return
                if once or stop.wait(interval):
                    break
            if not as_json:
                echo(f"controller stopped after {ticks} tick{'s' if ticks != 1 else ''}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for notifier in notifiers:  # deliver what is queued (bounded), then stop
                notifier.wait_idle(NOTIFY_ON_EXIT_SECS)
                notifier.close()


def _tick(manager: Any, once: bool) -> TickReport:
    """One tick; a busy or unreachable store is reported (and tried again next tick) unless ``once``."""
    try:
        report: TickReport = manager.tick()
    except (RuleEngineError, OSError) as exc:
        if once:
            raise
        report = TickReport((), (f"tick failed, retrying: {' '.join(str(exc).split())}",))
    return report


def _relisted(managers: Any, ticking: dict[str, Any]) -> dict[str, Any]:
    """The deployments to tick now; the last list while the store cannot be read (tried again next tick)."""
    try:
        found: dict[str, Any] = managers()
    except (RuleEngineError, OSError):
        return ticking
    return found


def _demo_line(line: str) -> None:
    click.echo(clean(line))  # escaped; the demo's report lines are kept whole (its tests read them)


# --- demo and schema -----------------------------------------------------------------------------


@click.command()
@click.option("--fast", is_flag=True, help="Shorter stages (for tests).")
@click.option(
    "--store", "demo_store", default=None, metavar="URL", help="Store to use [default: a temporary SQLite file]."
)
@click.option(
    "--processes", type=click.IntRange(min=1, max=64), default=None, metavar="N", help="Run it across N processes."
)
@json_option
def demo(fast: bool, demo_store: str | None, processes: int | None, as_json: bool) -> None:
    """Run the whole story on a temporary store: blue-green v1, canary v2, broken v3 rolled back.

    With --processes N, a canary across N evaluator processes, showing when the fleet serves each stage.
    """
    from rule_engine.cli.demo import run_demo
    from rule_engine.cli.fleet_demo import run_fleet_demo

    echo = None if as_json else _demo_line
    if processes is not None:
        summary = run_fleet_demo(processes, fast=fast, store_url=demo_store, echo=echo)
    else:
        summary = run_demo(fast=fast, store_url=demo_store, echo=echo)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    if not summary["ok"]:
        raise CommandFailed(f"the demo did not end as expected: {summary['problem']}")
