"""``deploy --shadow RATE [--max-disagreement R] [--abort-disagreement R] [--min-compared N]``.

A canary or blue-green deployment given ``--shadow`` starts with a shadow phase (docs/safety.md,
section 7): the candidate decides ``RATE`` of the events the stable version served, in every serving
process, and the controller proceeds, holds or aborts on the fleet's disagreement rate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rule_engine.control.shadowing import ShadowOptions, ShadowPhase
from rule_engine.control.strategies import InvalidStrategyError, Strategy

__all__ = ["SHADOW_NOTE", "shadow_cli_options", "shadow_line", "shadowed"]

_F = TypeVar("_F", bound=Callable[..., Any])
_RATE = click.FloatRange(0, 1)

#: What ``deploy`` prints after a deployment with a shadow phase.
SHADOW_NOTE = "the controller ('rule-engine controller') ends the shadow phase: proceed, hold or abort"

#: CLI option -> (ShadowOptions field, click type, help).
SHADOW_OPTIONS: dict[str, tuple[str, click.ParamType[Any], str]] = {
    "--shadow": (
        "sample_rate",
        click.FloatRange(0, 1, min_open=True),
        "Canary or blue-green: first run the candidate in the shadow of the stable version on this share "
        "of its events (0..1); 0% of traffic until the disagreement verdict proceeds.",
    ),
    "--max-disagreement": ("max_disagreement_rate", _RATE, "With --shadow: hold above this disagreement rate."),
    "--abort-disagreement": ("abort_disagreement_rate", _RATE, "With --shadow: abort above this disagreement rate."),
    "--min-compared": ("min_compared", click.IntRange(0, 10**9), "With --shadow: hold below this many compared."),
}
_FIELDS = {field for field, _, _ in SHADOW_OPTIONS.values()}


def shadow_cli_options(command: _F) -> _F:
    """Add the shadow options to a click command (each lands as a keyword prefixed ``shadow_``)."""
    for option, (field, kind, text) in reversed(SHADOW_OPTIONS.items()):
        metavar = "N" if field == "min_compared" else "RATE" if field == "sample_rate" else "R"
        command = click.option(option, f"shadow_{field}", type=kind, default=None, metavar=metavar, help=text)(command)
    return command


def shadowed(strategy: Strategy, options: dict[str, Any]) -> Strategy:
    """``strategy`` with the shadow phase the options ask for (popped from ``options``); usage errors say why."""
    given = {f: options.pop(f"shadow_{f}") for f in sorted(_FIELDS) if f"shadow_{f}" in options}
    given = {f: v for f, v in given.items() if v is not None}
    if not given:
        return strategy
    if "sample_rate" not in given:
        raise click.UsageError("--max-disagreement, --abort-disagreement and --min-compared go with --shadow RATE")
    if "shadow" not in {f.name for f in dataclasses.fields(strategy)}:  # type: ignore[arg-type]
        raise click.UsageError(f"--shadow applies to --strategy canary or blue-green, not {strategy.kind}")
    if "max_disagreement_rate" in given and "abort_disagreement_rate" not in given:
        given["abort_disagreement_rate"] = max(given["max_disagreement_rate"], ShadowOptions().abort_disagreement_rate)
    try:
        return dataclasses.replace(strategy, shadow=ShadowOptions(**given))  # type: ignore[type-var]
    except InvalidStrategyError as exc:
        raise click.UsageError(str(exc)) from None


def shadow_line(phase: ShadowPhase) -> str:
    """``status``'s line for a shadow phase: compared, disagreement, errors, verdict."""
    report, verdict = phase.report, phase.verdict
    return (
        f"shadow phase ({phase.options.sample_rate:.0%} sampled): {report.compared:,} compared, "
        f"{report.disagreement_rate:.2%} disagree, {report.error_rate:.2%} errors -> {verdict.action.upper()}"
        f" ({verdict.reason})"
    )
