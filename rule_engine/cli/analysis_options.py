"""The health-analysis options shared by ``deploy`` (stored with the version) and ``controller`` (its defaults).

``deploy --max-error-rate R --min-evaluations N --window SECS --bake SECS`` stores these thresholds with
the version, so every controller process judges it alike (docs/health.md); on ``controller`` they
replace the controller's own defaults for versions deployed without any.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import click

from rule_engine.health.thresholds import HealthThresholds

__all__ = ["ANALYSIS_OPTIONS", "analysis_options", "thresholds_from"]

_F = TypeVar("_F", bound=Callable[..., Any])
WEEK = 7 * 24 * 3600

#: CLI option -> (HealthThresholds field, click type, help).
ANALYSIS_OPTIONS: dict[str, tuple[str, click.ParamType[Any], str]] = {
    "--max-error-rate": ("max_error_rate", click.FloatRange(0, 1), "Unhealthy above this error rate (0..1)."),
    "--min-evaluations": (
        "min_evaluations",
        click.IntRange(0, 10**12),
        "No verdict (nothing advances or rolls back) below this many evaluations in the window.",
    ),
    "--window": ("window_secs", click.FloatRange(0, WEEK, min_open=True), "Seconds of recent traffic judged."),
    "--bake": ("bake_secs", click.FloatRange(0, WEEK), "Seconds a newly active version stays under watch."),
}


def analysis_options(command: _F) -> _F:
    """Add the analysis options to a click command (each lands as a keyword named after its field)."""
    for option, (field, kind, text) in reversed(ANALYSIS_OPTIONS.items()):
        command = click.option(option, field, type=kind, default=None, help=text)(command)
    return command


def thresholds_from(base: HealthThresholds, given: dict[str, Any]) -> HealthThresholds | None:
    """``base`` with the analysis options that were given, or None when none was; a bad mix is a usage error."""
    changes = {field: given[field] for field, _, _ in ANALYSIS_OPTIONS.values() if given.get(field) is not None}
    if not changes:
        return None
    try:
        return replace(base, **changes)
    except ValueError as exc:
        raise click.UsageError(f"analysis settings: {exc}") from None
