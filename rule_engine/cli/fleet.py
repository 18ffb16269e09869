"""Commands about the fleet: ``fleet`` (who serves what) and ``mirror`` (a per-host copy of the store)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import click

from rule_engine.cli._common import CliContext, CommandFailed, json_option, managed
from rule_engine.cli.output import echo, emit
from rule_engine.deployment.follower import PUSH_POLL
from rule_engine.deployment.mirror import Mirror
from rule_engine.errors import StoreError
from rule_engine.observability.views import fleet_view, redact_url
from rule_engine.stores.base import open_store
from rule_engine.stores.deployments import pick
from rule_engine.stores.sqlite import SQLiteStore

__all__ = ["fleet", "mirror"]


@click.command()
@json_option
@click.pass_context
def fleet(ctx: click.Context, as_json: bool) -> None:
    """Every process serving from the store: what it serves, when it was last seen, and who lags."""
    with managed(ctx) as state:
        manager = state.open(create=False)
        data = fleet_view(manager)

        def human() -> None:
            echo(f"fleet:   {data['fleet']['summary']}")
            for row in data["instances"]:
                serving = ", ".join(row["serving"]) or "nothing"
                share = f" ({row['percent']:g}% candidate)" if len(row["serving"]) > 1 else ""
                echo(f"  {row['host']}/pid {row['pid']}  revision {row['revision']}: {serving}{share}")
                via = f", via {row['via']}" if row["via"] else ""
                echo(f"      last seen {row['last_seen']}, routing {row['routing_check']}{via}")
                if row["lagging"]:
                    echo(f"      lagging: {row['lagging']}")

        emit(as_json, data, human)


@click.command()
@click.option(
    "--from", "upstream_url", required=True, metavar="URL", help="The store to copy (postgresql://, sqlite:///)."
)
@click.option("--to", "local_url", required=True, metavar="URL", help="The local SQLite mirror (sqlite:///path).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.005),
    default=0.02,
    show_default=True,
    metavar="SECONDS",
    help="How often local health and fleet rows are forwarded (and, for an upstream that cannot push, it is polled).",
)
@click.option("--once", is_flag=True, help="Sync once and exit.")
@click.option("--for", "duration", type=click.FloatRange(min=0), default=None, metavar="SECONDS", help="Stop after.")
@json_option
@click.pass_context
def mirror(
    ctx: click.Context,
    upstream_url: str,
    local_url: str,
    interval: float,
    once: bool,
    duration: float | None,
    as_json: bool,
) -> None:
    """Keep a read-only local SQLite copy of a store current, for this host's evaluator processes to follow.

    Local processes follow `--to` as any store; their health counters and fleet rows are forwarded
    upstream. Deploy and operate on the upstream: the mirror refuses writes.
    """
    if not local_url.startswith("sqlite:///"):
        raise CommandFailed(f"--to must be an SQLite URL (sqlite:///path/to/mirror.db), got {local_url!r}")
    if redact_url(upstream_url) == redact_url(local_url):
        raise CommandFailed("--from and --to name the same store")
    wanted = ctx.ensure_object(CliContext).deployment  # one deployment per mirror: --deployment, else the only one
    upstream = open_store(upstream_url, deployment=wanted)
    try:
        name = wanted or pick(None, upstream.deployment_names(), redact_url(upstream.url)) or None
    except BaseException:
        upstream.close()
        raise
    local = SQLiteStore.from_url(local_url, create=True, deployment=name)
    copy = Mirror(upstream, local)
    try:
        copy.open()
        if once:
            report = copy.sync_once()
            data: dict[str, Any] = {
                "upstream": redact_url(upstream.url),
                "mirror": local.url,
                "revision": report.revision,
                "copied": report.copied,
                "health_forwarded": report.health_forwarded,
                "instances_forwarded": report.instances_forwarded,
            }
            emit(
                as_json,
                data,
                lambda: echo(f"mirror {local.url} holds revision {report.revision} of {data['upstream']}"),
            )
            return
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()
            copy.stop()

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, on_signal)
        if not as_json:
            how = (
                f"following by LISTEN/NOTIFY (safety poll every {PUSH_POLL:g} s; local rows forwarded every {interval:g} s)"
                if callable(getattr(upstream, "listen", None))
                else f"every {interval:g} s"
            )
            echo(f"mirroring {redact_url(upstream.url)} into {local.url} {how} (Ctrl-C stops)")
        copy.run(interval, duration)
        emit(as_json, {"mirror": local.url, "revision": local.revision()}, lambda: echo("mirror stopped"))
    except StoreError:
        raise
    finally:
        upstream.close()
        local.close()
