"""Targeting commands: ``pin`` and ``unpin`` keys, and the ``deploy --agents/--flows`` scope options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from rule_engine.cli._common import by_option, default_actor, json_option, managed, os_account
from rule_engine.cli.output import echo, emit
from rule_engine.control.status import RolloutStatus
from rule_engine.control.strategies import InvalidStrategyError, Strategy
from rule_engine.control.targeting import MAX_PINS, pin_count

__all__ = ["pin", "scope_options", "scope_text", "scoped", "unpin"]

FC = TypeVar("FC", bound=Callable[..., Any])


def scope_options(command: FC) -> FC:
    """``--agents A,B`` and ``--flows F,G``: limit a canary or A/B test (docs/routing.md, "Targeting")."""
    command = click.option(
        "--flows", default=None, metavar="F,G", help="Canary/A-B: only events whose flow_id is one of these."
    )(command)
    return click.option(
        "--agents", default=None, metavar="A,B", help="Canary/A-B: only events whose agent_id is one of these."
    )(command)


def _names(option: str, text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise click.BadParameter(f"{text!r}: expected comma-separated names, e.g. login,checkout", param_hint=option)
    return names


def scoped(strategy: Strategy, agents: str | None, flows: str | None) -> Strategy:
    """``strategy`` limited to the ``--agents`` / ``--flows`` given (a usage error when it cannot be)."""
    try:
        return strategy.scoped(_names("--agents", agents), _names("--flows", flows))
    except InvalidStrategyError as exc:
        raise click.UsageError(str(exc)) from None


@click.command()
@click.argument("keys", nargs=-1, required=True)
@click.option("--version", "version_id", required=True, metavar="VERSION", help="The stable or candidate version id.")
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@by_option
@json_option
@click.pass_context
def pin(
    ctx: click.Context, keys: tuple[str, ...], version_id: str, reason: str, actor: str | None, as_json: bool
) -> None:
    """Serve KEYS by VERSION (the rollout's stable or candidate) until the rollout ends.

    At most 1,000 keys are pinned per rollout; pins end with the rollout.
    """
    with managed(ctx) as state:
        manager = state.open()
        why = f"{reason} [os: {os_account()}]" if reason else f"[os: {os_account()}]"
        changed = manager.pin_keys(keys, version_id, actor=actor or default_actor(), reason=why)
        total = pin_count(manager.state)
        data = {"version_id": version_id, "keys": sorted(set(keys)), "changed": changed, "pins": total}
        _emit(as_json, data, f"pinned {changed} key(s) to {version_id}", total)


@click.command()
@click.argument("keys", nargs=-1, required=True)
@click.option("--reason", default="", help="Why (recorded in the audit trail).")
@by_option
@json_option
@click.pass_context
def unpin(ctx: click.Context, keys: tuple[str, ...], reason: str, actor: str | None, as_json: bool) -> None:
    """Give pinned KEYS back to the rollout's hash routing (keys that are not pinned are ignored)."""
    with managed(ctx) as state:
        manager = state.open()
        why = f"{reason} [os: {os_account()}]" if reason else f"[os: {os_account()}]"
        removed = manager.unpin_keys(keys, actor=actor or default_actor(), reason=why)
        total = pin_count(manager.state)
        data = {"keys": sorted(set(keys)), "unpinned": removed, "pins": total}
        _emit(as_json, data, f"unpinned {removed} key(s)", total)


def _emit(as_json: bool, data: dict[str, Any], line: str, total: int) -> None:
    def human() -> None:
        echo(line)
        echo(f"  {total} of at most {MAX_PINS:,} keys pinned in this rollout")

    emit(as_json, data, human)


def scope_text(rollout: RolloutStatus) -> str:
    """One line for ``status``: who the rollout is limited to, and how many keys are pinned."""
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (("agents", rollout.agents), ("flows", rollout.flows))
        if names
    ]
    scope = "; ".join(parts) if parts else "everyone"
    return f"{scope}" + (f"; {rollout.pins} pinned key(s)" if rollout.pins else "")
