"""Know before you roll: replay, check, lint, preview (docs/safety.md).

Exit codes: 0 when the command found nothing over its gate, 1 when it did (``replay``: changed rate
over ``--max-changed-rate``; ``check``: a comparison raised on recorded traffic; ``lint``: an error
or warning finding) or failed, 2 for a usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rule_engine.analysis.check import Finding, check_events, compatibility
from rule_engine.analysis.events import DEFAULT_MAX_EVENTS, DEFAULT_MAX_LINE_BYTES, EventSource, read_events
from rule_engine.analysis.lint import lint as lint_table
from rule_engine.analysis.lint import semantic_diff, unseen_scopes
from rule_engine.analysis.preview import DEFAULT_STAGES, routing_algorithm_of
from rule_engine.analysis.preview import preview as preview_stages
from rule_engine.analysis.replay import DEFAULT_EXAMPLES, MAX_EXAMPLES
from rule_engine.analysis.replay import replay as replay_events
from rule_engine.bundle.models import load_bundle
from rule_engine.cli._common import CliContext, CommandFailed, json_option, managed
from rule_engine.cli.output import echo, emit
from rule_engine.control.strategies import ABTest, Canary
from rule_engine.evaluation.table import RuleTable
from rule_engine.serving.routing import BASIS_POINTS

__all__ = ["check", "lint", "preview", "replay"]


def _events_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options: tuple[Callable[[Callable[..., Any]], Callable[..., Any]], ...] = (
        click.option(
            "--key-field",
            default="user_id",
            show_default=True,
            metavar="FIELD",
            help="Routing key of events without a record 'key' (a dotted path reads a nested field).",
        ),
        click.option(
            "--max-events",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_EVENTS,
            show_default=True,
            help="Read at most this many events (the rest is reported as truncated).",
        ),
        click.option(
            "--max-line-bytes",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_LINE_BYTES,
            show_default=True,
            help="Skip (and count) lines longer than this.",
        ),
    )
    for option in reversed(options):
        command = option(command)
    return command


def _source(path: str, key_field: str, max_events: int, max_line_bytes: int) -> EventSource:
    return read_events(path, key_field=key_field, max_events=max_events, max_line_bytes=max_line_bytes)


def _table(state: CliContext, ref: str) -> tuple[str, RuleTable]:
    """A bundle file or a stored version id, compiled."""
    if Path(ref).is_file() or ref.endswith(".json"):
        return ref, RuleTable.from_bundle(load_bundle(ref))
    return ref, RuleTable.from_bundle(state.open().bundle_of(ref), version_id=ref)


def _baseline(state: CliContext, against: str | None) -> tuple[str, RuleTable]:
    if against is not None:
        return _table(state, against)
    active = state.open().get_active_version_id()
    if active is None:
        raise click.UsageError(f"no version is active in {state.shown_url}; pass --against VERSION|BUNDLE")
    return _table(state, active)


def _read_note(source: EventSource) -> list[str]:
    notes = []
    if source.invalid:
        notes.append(f"{source.invalid} invalid line(s) skipped; first: {source.problems[0]}")
    if source.truncated:
        notes.append(f"stopped after --max-events {source.max_events:,}: the rest of the file was not read")
    return notes


def _clip(value: Any, width: int = 100) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_findings(findings: list[Finding]) -> None:
    for f in findings:
        echo(f"  {f.severity:<7} {f.kind:<13} {f.rule_id}  {f.field or ''}  ({f.share:.1%}): {f.detail}")
        for scope in f.by_scope[:5]:
            echo(f"          {scope['agent']} / {scope['flow']}: {scope['count']} of {scope['events']}")


class _Progress:
    """``\\r`` progress lines on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label: str) -> None:
        self.enabled = sys.stderr.isatty()
        self.label = label

    def __call__(self, count: int) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}: {count:,} events", err=True, nl=False)

    def done(self) -> None:
        if self.enabled:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


# --- replay ----------------------------------------------------------------------------------------


@click.command()
@click.argument("events", metavar="EVENTS")
@click.option("--candidate", required=True, metavar="BUNDLE|VERSION", help="The version to try (file or version id).")
@click.option(
    "--against", default=None, metavar="VERSION|BUNDLE", help="Compare with this [default: the active version]."
)
@click.option(
    "--max-changed-rate",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="R",
    help="Exit 1 when more than this share (0..1) of events change decision.",
)
@click.option(
    "--examples",
    type=click.IntRange(0, MAX_EXAMPLES),
    default=DEFAULT_EXAMPLES,
    show_default=True,
    help="Example events kept per group.",
)
@click.option("--no-check", is_flag=True, help="Skip the type check of the candidate against the events.")
@_events_options
@json_option
@click.pass_context
def replay(
    ctx: click.Context,
    events: str,
    candidate: str,
    against: str | None,
    max_changed_rate: float | None,
    examples: int,
    no_check: bool,
    as_json: bool,
    key_field: str,
    max_events: int,
    max_line_bytes: int,
) -> None:
    """Decide recorded EVENTS (JSONL, gzip or not, '-' for stdin) on two versions; report what changes."""
    with managed(ctx) as state:
        cand_name, cand = _table(state, candidate)
        base_name, base = _baseline(state, against)
    source = _source(events, key_field, max_events, max_line_bytes)
    progress = _Progress("replay")
    try:
        report = replay_events(
            cand,
            base,
            source,
            examples=examples,
            check=not no_check,
            on_progress=progress,
            names=(cand_name, base_name),
        )
    finally:
        progress.done()
    data = report.as_dict()
    data["source"] = source.summary()
    over = max_changed_rate is not None and report.changed_rate > max_changed_rate
    data["max_changed_rate"] = max_changed_rate
    data["passed"] = not over

    def human() -> None:
        echo(f"replay {events}: candidate {cand_name} against {base_name}")
        for note in _read_note(source):
            echo(f"  note: {note}")
        echo(
            f"events: {report.events:,}  changed: {report.changed:,} ({report.changed_rate:.2%})  "
            f"same decision, other rule: {report.rule_changed:,}"
        )
        errors, new = report.errors, report.new_errors
        echo(
            f"errors: candidate {errors['candidate']:,} ({new['candidate']:,} new), "
            f"baseline {errors['baseline']:,} ({new['baseline']:,} new)"
        )
        if report.latency_ratio is not None:
            echo(f"latency: candidate {report.latency_ratio:.2f}x baseline")
        for group in report.sorted_groups():
            rules = f"{', '.join(group.from_rules)} -> {', '.join(group.to_rules)}"
            echo(f"  {group.count:>7,}  {group.agent} / {group.flow}  {group.before} -> {group.after}  ({rules})")
            for example in group.examples:
                echo(f"           line {example['line']}: {_clip(example['event'])}")
        if report.other_changed:
            echo(f"  {report.other_changed:>7,}  in further groups (not itemised)")
        for err in sorted(report.error_groups.values(), key=lambda g: -g.count)[:10]:
            echo(f"  {err.side} error x{err.count:,} ({err.new:,} new) {err.agent} / {err.flow}: {err.message}")
        if report.check is not None:
            findings = report.check.findings()
            echo(f"check of the candidate: {len(findings)} finding(s)")
            _print_findings(findings)
        if max_changed_rate is not None:
            verdict = "FAIL" if over else "PASS"
            echo(f"{verdict}: changed rate {report.changed_rate:.2%} vs --max-changed-rate {max_changed_rate:g}")

    emit(as_json, data, human)
    if over:
        raise CommandFailed(
            f"{report.changed_rate:.2%} of {report.events:,} events change decision, "
            f"over --max-changed-rate {max_changed_rate:g}"
        )
    if report.events == 0:
        raise CommandFailed(f"{events}: no events read" + (f" ({source.problems[0]})" if source.problems else ""))


# --- check -----------------------------------------------------------------------------------------


@click.command()
@click.argument("bundle", metavar="BUNDLE|VERSION")
@click.option("--events", "events", default=None, metavar="EVENTS", help="Recorded events (JSONL, gzip, '-').")
@click.option("--against", default=None, metavar="VERSION|BUNDLE", help="Also compare fields and types with OLD.")
@_events_options
@json_option
@click.pass_context
def check(
    ctx: click.Context,
    bundle: str,
    events: str | None,
    against: str | None,
    as_json: bool,
    key_field: str,
    max_events: int,
    max_line_bytes: int,
) -> None:
    """Check a bundle's comparisons against the types recorded events carry (and --against OLD)."""
    if events is None and against is None:
        raise click.UsageError("give --events EVENTS, --against OLD, or both")
    with managed(ctx) as state:
        name, table = _table(state, bundle)
        old = _table(state, against) if against is not None else None
    source = _source(events, key_field, max_events, max_line_bytes) if events is not None else None
    findings = check_events(table, source).findings() if source is not None else []
    compat = compatibility(table, old[1]) if old is not None else None
    raises = [f for f in findings if f.kind == "raises"]
    data = {
        "bundle": name,
        "against": old[0] if old is not None else None,
        "source": source.summary() if source is not None else None,
        "findings": [f.as_dict() for f in findings],
        "compatibility": compat,
    }

    def human() -> None:
        if source is not None:
            echo(f"check {name} against {source.events:,} events of {events}: {len(findings)} finding(s)")
            for note in _read_note(source):
                echo(f"  note: {note}")
            _print_findings(findings)
        if compat is not None and old is not None:
            echo(f"compatibility of {name} with {old[0]}:")
            for item in compat["added_fields"]:
                echo(f"  + reads {item['field']} ({'/'.join(item['needs'])}) in {', '.join(item['rule_ids'])}")
            for item in compat["removed_fields"]:
                echo(f"  - no longer reads {item['field']}")
            for item in compat["changed_types"]:
                echo(f"  ~ {item['field']}: needs {'/'.join(item['after'])}, was {'/'.join(item['before'])}")
            if not any(compat.values()):
                echo("  same fields, same types")

    emit(as_json, data, human)
    if raises:
        first = raises[0]
        raise CommandFailed(
            f"{len(raises)} comparison(s) raise on recorded traffic; first: rule {first.rule_id!r}, "
            f"field {first.field!r} on {first.count} of {first.events} events in scope"
        )


# --- lint ------------------------------------------------------------------------------------------


@click.command()
@click.argument("bundle", metavar="BUNDLE|VERSION")
@click.option("--events", "events", default=None, metavar="EVENTS", help="Also report scopes no event carries.")
@click.option("--diff", "old", default=None, metavar="OLD", help="Also show which decisions can change from OLD.")
@_events_options
@json_option
@click.pass_context
def lint(
    ctx: click.Context,
    bundle: str,
    events: str | None,
    old: str | None,
    as_json: bool,
    key_field: str,
    max_events: int,
    max_line_bytes: int,
) -> None:
    """Rules that can never decide, duplicates, unseen scopes; --diff OLD: what can change per scope."""
    with managed(ctx) as state:
        name, table = _table(state, bundle)
        previous = _table(state, old) if old is not None else None
    report = lint_table(table)
    findings = list(report.findings)
    source = _source(events, key_field, max_events, max_line_bytes) if events is not None else None
    if source is not None:
        agents: set[Any] = set()
        flows: set[Any] = set()
        for recorded in source:
            agent, flow = recorded.event.get("agent_id"), recorded.event.get("flow_id")
            if isinstance(agent, str):
                agents.add(agent)
            if isinstance(flow, str):
                flows.add(flow)
        findings.extend(unseen_scopes(table, agents, flows))
    diff = semantic_diff(table, previous[1]) if previous is not None else None
    failing = [f for f in findings if f.severity in ("error", "warning")]
    data = {
        "bundle": name,
        "complete": report.complete,
        "findings": [f.as_dict() for f in findings],
        "source": source.summary() if source is not None else None,
        "diff": diff,
    }

    def human() -> None:
        echo(f"lint {name}: {len(findings)} finding(s)" + ("" if report.complete else " (analysis incomplete)"))
        for f in findings:
            echo(f"  {f.severity:<7} {f.kind:<15} {f.rule_id}: {f.detail}")
        if diff is not None and previous is not None:
            echo(f"decisions that can change from {previous[0]} to {name}:")
            for cell in diff["cells"]:
                changes = ", ".join(cell["can_change"]) or (
                    "reason/params only" if cell["details_may_change"] else "none"
                )
                echo(f"  {cell['agent']} / {cell['flow']}: {changes}")
            if diff["on_error"] is not None:
                echo(f"  on_error decision: {diff['on_error']['from']} -> {diff['on_error']['to']}")

    emit(as_json, data, human)
    if failing:
        raise CommandFailed(
            f"{len(failing)} lint finding(s) of severity error or warning; first: {failing[0].rule_id}: {failing[0].detail}"
        )


# --- preview ---------------------------------------------------------------------------------------


def _stages(text: str | None, version_strategy: Any) -> tuple[float, ...]:
    if text is None:
        if isinstance(version_strategy, Canary):
            return tuple(version_strategy.stages)
        if isinstance(version_strategy, ABTest):  # B's share, as activate routes it
            return ((BASIS_POINTS - round(version_strategy.split_ratio * BASIS_POINTS)) / 100,)
        return DEFAULT_STAGES
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected percentages like 10,25,50,100, got {text!r}", param_hint="--stages"
        ) from None
    bad = [v for v in values if not 0 < v <= 100 or round(v * 100) != v * 100]
    if not values or bad:
        raise click.BadParameter(
            f"stages must be percentages in (0, 100] with at most two decimals, got {text!r}", param_hint="--stages"
        )
    return values


@click.command()
@click.argument("version", metavar="VERSION")
@click.option("--events", "events", required=True, metavar="EVENTS", help="Recorded events (JSONL, gzip, '-').")
@click.option(
    "--stages",
    default=None,
    metavar="10,25,50,100",
    help="Stages in percent [default: the version's canary stages, its A/B share, else 10,25,50,100].",
)
@click.option(
    "--against", default=None, metavar="VERSION|BUNDLE", help="Compare with this [default: the active version]."
)
@_events_options
@json_option
@click.pass_context
def preview(
    ctx: click.Context,
    version: str,
    events: str,
    stages: str | None,
    against: str | None,
    as_json: bool,
    key_field: str,
    max_events: int,
    max_line_bytes: int,
) -> None:
    """Exactly which recorded events and keys each stage sends to a prepared VERSION, and what changes."""
    with managed(ctx) as state:
        manager = state.open()
        info = manager.get_deployment_info(version)
        if info is None:
            raise CommandFailed(f"Version not found: {version!r} (see 'rule-engine status')")
        chosen = _stages(stages, info.strategy)
        _, cand = _table(state, version)
        base_name, base = _baseline(state, against)
        algorithm = routing_algorithm_of(manager.state, version)  # a running rollout keeps its own
    source = _source(events, key_field, max_events, max_line_bytes)
    report = preview_stages(cand, base, version, source, chosen, algorithm)
    data = {"version": version, "baseline": base_name, **report.as_dict(), "source": source.summary()}

    def human() -> None:
        echo(f"preview {version} against {base_name} on {report.events:,} events of {events} (salt {version})")
        for note in _read_note(source):
            echo(f"  note: {note}")
        if report.events != report.keyed_events:
            echo(
                f"  {report.events - report.keyed_events:,} events have no routing key: always served by the stable version"
            )
        echo(f"  {'stage':>7}  {'events':>9}  {'keys':>7}  {'changed':>9}  {'keys chg':>8}  {'errors':>7}")
        for stage in report.stages:
            echo(
                f"  {stage.percent:>6g}%  {stage.events:>9,}  {stage.keys:>7,}  {stage.changed_events:>9,}  "
                f"{stage.changed_keys:>8,}  {stage.errors:>7,}"
            )

    emit(as_json, data, human)
