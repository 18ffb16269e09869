"""Commands of the operations surface: ``serve`` (HTTP API + dashboard + /metrics), ``token create``.

They need the ``server`` extra (``pip install 'rule_engine[server]'``); without it they fail with one
line saying so.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from rule_engine.cli._common import CommandFailed, _managed

DEFAULT_TOKENS = ".rule-engine/tokens.json"
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
    from rule_engine.observability.gates import GatedController, Gates
    from rule_engine.observability.webhooks import Notifier, load_webhooks
    from rule_engine.server.app import ServerSettings, create_app
    from rule_engine.server.auth import Tokens

    path = _tokens_path(tokens_file)
    tokens = Tokens.load(path) if (tokens_file or path.exists()) else None
    hooks = load_webhooks(webhooks_file) if webhooks_file else []
    with _managed(ctx) as state:
        manager = state.open(follow=True)
        notifier = Notifier(hooks).attach(manager) if hooks else None
        gates = Gates(hooks)
        gated = GatedController(manager, gates, notifier=notifier) if gates else None
        settings = ServerSettings(
            tokens=tokens, read_auth=read_auth, max_body_bytes=max_body_bytes, store_url=state.url
        )
        app = create_app(manager, settings, notifier=notifier, gates=gated)
        loop: BackgroundLoop | None = None
        if run_controller and gated is not None:
            loop = BackgroundLoop("rule-engine-gated-controller", interval, gated.step)
            loop.start()
        elif run_controller:
            loop = manager.start_controller(interval)
        elif gated is not None:
            click.echo("note: gate webhooks hold the controller's steps; run it here with --controller", err=True)
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"serving {state.url} on http://{shown}:{port}/ (API docs at /api/docs, metrics at /metrics)")
        if tokens is None:
            click.echo(f"no tokens file ({path}): writes are refused; 'rule-engine token create NAME' makes one")
        if not _is_loopback(host):
            click.echo(f"warning: bound to {host}, reachable from other hosts", err=True)
        try:
            uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
        finally:
            if loop is not None:
                loop.stop()
            if notifier is not None:
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
