"""Commands of the operations surface: ``serve`` (HTTP API, dashboard, /metrics), ``token create``, ``watch``.

They need the ``server`` extra (``pip install 'rule_engine[server]'``); without it they fail with one
line saying so.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import click

from rule_engine.cli._common import CommandFailed, by_option, default_actor, json_option, managed

DEFAULT_TOKENS = ".rule-engine/tokens.json"
MAX_CONNECTIONS = 256
_TOKENS_ENV = "RULE_ENGINE_TOKENS"
_EXTRA_HINT = "install the server extra: pip install 'rule_engine[server]'"


def _tokens_path(value: str | None) -> Path:
    return Path(value or os.environ.get(_TOKENS_ENV) or DEFAULT_TOKENS)


tokens_option = click.option(
    "--tokens",
    "tokens_file",
    default=None,
    metavar="FILE",
    help=f"Tokens file (names and SHA-256 hashes)  [default: ${_TOKENS_ENV}, else {DEFAULT_TOKENS}]",
)


def _require_server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CommandFailed(f"{exc.name or 'a dependency'} is missing; {_EXTRA_HINT}") from None


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@tokens_option
@click.option("--read-auth", is_flag=True, help="Require a token for reads too (writes always need one).")
@click.option("--controller", "run_controller", is_flag=True, help="Also run the controller loop in this process.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="SECONDS")
@click.option("--webhooks", "webhooks_file", default=None, metavar="FILE", help="Webhooks and gates (JSON).")
@click.option(
    "--max-body-bytes", type=click.IntRange(min=1024), default=8 * 1024 * 1024, show_default=True, metavar="N"
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    tokens_file: str | None,
    read_auth: bool,
    run_controller: bool,
    interval: float,
    webhooks_file: str | None,
    max_body_bytes: int,
) -> None:
    """Serve the HTTP API, the live dashboard (/) and Prometheus metrics (/metrics) until stopped."""
    _require_server_extra()
    import uvicorn

    from rule_engine.deployment.background import BackgroundLoop
    from rule_engine.observability.gates import install_gates
    from rule_engine.observability.views import redact_url
    from rule_engine.observability.webhooks import Notifier, load_webhooks
    from rule_engine.server.app import ServerSettings, create_app
    from rule_engine.server.auth import Tokens

    path = _tokens_path(tokens_file)
    tokens = Tokens.load(path) if (tokens_file or path.exists()) else None
    hooks = load_webhooks(webhooks_file) if webhooks_file else []
    with managed(ctx) as state:
        trust = state.trust()
        # every deployment of the store (or the one --deployment names), each at ?deployment=NAME
        opened = state.open_each(follow=True, trust=trust) if trust is not None else state.open_each(follow=True)
        managers = {name or "default": manager for name, manager in opened.items()}
        notifiers = {name: Notifier(hooks, deployment=name).attach(m) for name, m in managers.items()} if hooks else {}
        gated = [install_gates(m, hooks, name) for name, m in managers.items()]  # asked by each one's controller
        settings = ServerSettings(
            tokens=tokens, read_auth=read_auth, max_body_bytes=max_body_bytes, store_url=redact_url(state.url)
        )
        app = create_app(managers, settings, notifier=notifiers or None)
        loops: list[BackgroundLoop] = []
        if run_controller:
            loops = [m.start_controller(interval) for m in managers.values()]
        elif any(gated):
            click.echo(
                "note: gate webhooks are asked by the controller; run it here with --controller "
                "(or 'rule-engine controller --webhooks FILE')",
                err=True,
            )
        shown = f"[{host}]" if ":" in host else host
        click.echo(
            f"serving {redact_url(state.url)} on http://{shown}:{port}/ (API docs at /api/docs, metrics at /metrics)"
        )
        if tokens is None:
            click.echo(f"no tokens file ({path}): writes are refused; 'rule-engine token create NAME' makes one")
        if not _is_loopback(host):
            click.echo(f"warning: bound to {host}, reachable from other hosts", err=True)
        try:
            uvicorn.run(
                app,
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=5,
                limit_concurrency=MAX_CONNECTIONS,  # beyond it: 503, so open event streams stay bounded too
                timeout_keep_alive=5,
                server_header=False,
            )
        finally:
            for running in loops:
                running.stop()
            for notifier in notifiers.values():
                notifier.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group()
def token() -> None:
    """Bearer tokens for 'rule-engine serve' (only their hashes are stored)."""


@token.command("create")
@click.argument("name")
@tokens_option
def token_create(name: str, tokens_file: str | None) -> None:
    """Make a token NAME (the audit actor of its writes); prints it once, stores only its hash."""
    from rule_engine.server.auth import create_token

    path = _tokens_path(tokens_file)
    secret = create_token(path, name)
    click.echo(secret)
    click.echo(f"stored the hash of token {name!r} in {path} (mode 0600); the token is not shown again", err=True)


@click.command()
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--url", default=None, metavar="URL", help="Poll this HTTP(S) bundle URL instead (ETag / If-None-Match).")
@click.option(
    "--strategy",
    type=click.Choice(["blue-green", "canary", "ab-test"]),
    default=None,
    help="How each new bundle rolls out [default: blue-green, or implied by the options below].",
)
@click.option("--stages", default=None, metavar="10,25,50,100", help="Canary stages in percent, ending at 100.")
@click.option(
    "--stage-duration", type=float, default=None, metavar="SECONDS", help="Canary: how long each stage holds."
)
@click.option(
    "--split-ratio", type=float, default=None, metavar="R", help="A/B test: share kept by the stable version."
)
@click.option("--test-duration", type=float, default=None, metavar="SECONDS", help="A/B test: how long it runs.")
@click.option("--supersede", is_flag=True, help="A new bundle rolls back a rollout in progress and starts instead.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="--url: how often to poll; DIR: how often to rescan without a change event.",
)
@click.option(
    "--debounce",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    metavar="MS",
    help="DIR: wait this long for writes to settle before reading.",
)
@click.option("--once", is_flag=True, help="Look once, deploy what is new, and exit (1 if anything was refused).")
@by_option
@json_option
@click.pass_context
def watch(
    ctx: click.Context,
    directory: str | None,
    url: str | None,
    strategy: str | None,
    stages: str | None,
    stage_duration: float | None,
    split_ratio: float | None,
    test_duration: float | None,
    supersede: bool,
    interval: float,
    debounce: int,
    once: bool,
    actor: str | None,
    as_json: bool,
) -> None:
    """Deploy new or changed bundles from DIR (or --url) as they appear; report and skip invalid ones."""
    from rule_engine.cli.deploy import _build_strategy
    from rule_engine.observability.watch import BundleWatcher, DirectorySource, Report, UrlSource, watch_directory

    if (directory is None) == (url is None):
        raise click.UsageError("give a DIRECTORY or --url URL (one of them)")
    chosen = _build_strategy(
        strategy,
        stages=stages,
        stage_duration=stage_duration,
        split_ratio=split_ratio,
        test_duration=test_duration,
        at=None,
    )
    refused: list[Report] = []

    def report(item: Report) -> None:
        if item.kind in ("invalid", "error"):
            refused.append(item)
        if as_json:
            click.echo(
                json.dumps(
                    {"kind": item.kind, "source": item.source, "message": item.message, "version_id": item.version_id}
                )
            )
        elif item.kind in ("invalid", "error"):
            click.echo(f"error: {item.source}: {item.message}", err=True)
        else:
            click.echo(f"{item.kind}: {item.source}: {item.message}")

    stop = threading.Event()
    with managed(ctx) as state:
        trust = state.trust()
        manager = state.open(trust=trust) if trust is not None else state.open()
        watcher = BundleWatcher(manager, chosen, actor=actor or default_actor(), supersede=supersede, report=report)
        source = DirectorySource(directory) if directory is not None else UrlSource(str(url))
        if once:
            watcher.scan(source)
            if refused:
                raise CommandFailed(
                    f"{len(refused)} bundle source(s) refused; first: {refused[0].source}: {refused[0].message}"
                )
            return
        previous = _on_stop_signals(stop)
        try:
            if not as_json:
                click.echo(f"watching {directory or url} on {state.shown_url} (Ctrl-C to stop)")
            if isinstance(source, DirectorySource):
                try:
                    import watchfiles  # noqa: F401
                except ImportError:
                    raise CommandFailed(f"watchfiles is missing; {_EXTRA_HINT}") from None
                watch_directory(watcher, source, stop, debounce_ms=debounce, rescan_secs=interval)
            else:
                while not stop.is_set():
                    watcher.scan(source)
                    stop.wait(interval)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _on_stop_signals(stop: threading.Event) -> dict[signal.Signals, Any]:
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous
