"""Commands on bundles themselves: validate, diff, evaluate, schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rule_engine.bundle.models import RuleBundle, load_bundle
from rule_engine.bundle.signing import TrustPolicy, find_signature
from rule_engine.cli._common import CliContext, CommandFailed, json_option, managed, os_error_line
from rule_engine.cli.output import echo, emit
from rule_engine.errors import BundleValidationError
from rule_engine.evaluation.selftest import bundle_test_results, run_bundle_tests
from rule_engine.evaluation.table import RuleTable
from rule_engine.serving.engine import RuleEngine

# --- validate ----------------------------------------------------------------------------------------


@click.command()
@click.argument("bundles", nargs=-1, required=True, metavar="BUNDLE...")
@click.option(
    "-v", "--verbose", "verbose", is_flag=True, help="List each bundle test by name, pass or fail (as opa test -v)."
)
@json_option
@click.pass_context
def validate(ctx: click.Context, bundles: tuple[str, ...], verbose: bool, as_json: bool) -> None:
    """Validate bundle files and run their own tests (with --trust: check their signatures first)."""
    trust = ctx.ensure_object(CliContext).trust()
    results = [_validate_one(path, trust, verbose=verbose) for path in bundles]
    failed = [r for r in results if not r["ok"]]

    def human() -> None:
        for r in results:
            if r["ok"]:
                signed = f"; signed by {r['signature']['alg']}:{r['signature']['key_id']}" if trust else ""
                echo(f"OK    {r['path']}")
                echo(f"      {r['bundle_id']} {r['version']}: {r['rules']} rules, {r['tests']} tests passed{signed}")
            else:
                count = len(r["problems"])
                echo(f"FAIL  {r['path']}  ({count} problem{'s' if count != 1 else ''})")
                for problem in r["problems"]:
                    echo(f"      {problem['path']}: {problem['message']}")
            for test in r.get("test_results", ()):
                echo(f"      {'PASS' if test['passed'] else 'FAIL'}  {test['name']}")
                if not test["passed"]:
                    echo(f"            {_test_failure(test)}")

    emit(as_json, {"ok": not failed, "bundles": results}, human)
    if failed:
        first = failed[0]
        raise CommandFailed(
            f"{len(failed)} of {len(results)} bundle{'s' if len(results) != 1 else ''} invalid; "
            f"first: {first['path']}: {first['problems'][0]['path']}: {first['problems'][0]['message']}"
        )


def _test_failure(test: dict[str, Any]) -> str:
    """Expected vs actual, and the rule that decided, for one failed bundle test."""
    want, got = test["expected"], test["actual"]
    expected = want["decision"] + (f" by rule {want['rule_id']}" if want["rule_id"] else "")
    if test["error"]:
        return f"expected {expected}; evaluation error in rule {got['rule_id']}: {test['error']}"
    decided = f"rule {got['rule_id']}" if got["rule_id"] else "the default decision (no rule matched)"
    return f"expected {expected}, got {got['decision']}: decided by {decided}"


def _validate_one(path: str, trust: TrustPolicy | None = None, *, verbose: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"path": path, "ok": False, "bundle_id": None, "version": None, "digest": None}
    if trust is not None:
        result["signature"] = {"status": "unchecked", "alg": None, "key_id": None}
    try:
        bundle = load_bundle(path)
        result.update(bundle_id=bundle.bundle_id, version=bundle.version, digest=bundle.digest)
        result.update(rules=len(bundle.rules), tests=len(bundle.tests))
        if trust is not None:  # before the bundle's tests run
            result["signature"]["status"] = "refused"
            signature = find_signature(path)
            result["signature"].update(
                status="refused" if signature else "unsigned",
                alg=signature.alg if signature else None,
                key_id=signature.key_id if signature else None,
            )
            trust.verify(bundle, signature)
            result["signature"]["status"] = "trusted"
        table = RuleTable.from_bundle(bundle)
        if verbose:
            result["test_results"] = [t.to_dict() for t in bundle_test_results(bundle, table)]
        run_bundle_tests(bundle, table)
    except BundleValidationError as exc:
        result["problems"] = [{"path": p.path, "message": p.message} for p in exc.problems] or [
            {"path": "$", "message": str(exc)}
        ]
        return result
    except OSError as exc:
        result["problems"] = [{"path": "$", "message": os_error_line(exc)}]
        return result
    result["ok"] = True
    result["problems"] = []
    return result


# --- diff ------------------------------------------------------------------------------------------


def _load_side(state: CliContext, ref: str) -> tuple[str, RuleBundle]:
    path = Path(ref)
    if path.is_file() or ref.endswith(".json"):
        return str(path), load_bundle(path)
    return ref, state.open(create=False).bundle_of(ref)


def _rule_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def bundle_diff(a: RuleBundle, b: RuleBundle) -> dict[str, Any]:
    """Rules added, removed and changed (by rule id) from bundle ``a`` to bundle ``b``."""
    old = {r.id: r.model_dump(mode="json", exclude_unset=True) for r in a.rules}
    new = {r.id: r.model_dump(mode="json", exclude_unset=True) for r in b.rules}
    changed = [
        {"rule_id": rid, "fields": _rule_changes(old[rid], new[rid]), "from": old[rid], "to": new[rid]}
        for rid in old
        if rid in new and old[rid] != new[rid]
    ]
    settings = [
        name
        for name in ("default", "on_error")
        if (getattr(a, name).model_dump(mode="json") if getattr(a, name) else None)
        != (getattr(b, name).model_dump(mode="json") if getattr(b, name) else None)
    ]
    return {
        "added": [rid for rid in new if rid not in old],
        "removed": [rid for rid in old if rid not in new],
        "changed": changed,
        "unchanged": sum(1 for rid in old if rid in new and old[rid] == new[rid]),
        "settings_changed": settings,
    }


@click.command()
@click.argument("left", metavar="VERSION_OR_BUNDLE")
@click.argument("right", metavar="VERSION_OR_BUNDLE")
@json_option
@click.pass_context
def diff(ctx: click.Context, left: str, right: str, as_json: bool) -> None:
    """Rules added, removed and changed between two bundles (a file path or a stored version id each)."""
    with managed(ctx) as state:
        left_name, a = _load_side(state, left)
        right_name, b = _load_side(state, right)
    result = bundle_diff(a, b)
    data = {
        "from": {"ref": left_name, "bundle_id": a.bundle_id, "version": a.version, "digest": a.digest},
        "to": {"ref": right_name, "bundle_id": b.bundle_id, "version": b.version, "digest": b.digest},
        **result,
    }

    def human() -> None:
        echo(f"--- {left_name} ({a.bundle_id} {a.version})")
        echo(f"+++ {right_name} ({b.bundle_id} {b.version})")
        for rid in result["added"]:
            echo(f"+ {rid}")
        for rid in result["removed"]:
            echo(f"- {rid}")
        for change in result["changed"]:
            echo(f"~ {change['rule_id']}  ({', '.join(change['fields'])} changed)")
        for name in result["settings_changed"]:
            echo(f"~ bundle {name} decision changed")
        total = len(result["added"]) + len(result["removed"]) + len(result["changed"])
        echo(
            f"{len(result['added'])} added, {len(result['removed'])} removed, {len(result['changed'])} changed, "
            f"{result['unchanged']} unchanged" + ("" if total or result["settings_changed"] else " (identical rules)")
        )

    emit(as_json, data, human)


# --- evaluate ----------------------------------------------------------------------------------------


def _read_event(text: str) -> dict[str, Any]:
    where = "EVENT_JSON"
    if text.startswith("@"):
        where = text[1:]
        try:
            text = sys.stdin.read() if where == "-" else Path(where).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandFailed(f"cannot read event file: {os_error_line(exc)}") from None
        except UnicodeDecodeError as exc:
            raise CommandFailed(f"{where}: event is not UTF-8 ({exc.reason})") from None
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandFailed(
            f"{where}: event is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(event, dict):
        raise CommandFailed(f"{where}: event must be a JSON object, got {type(event).__name__}")
    return event


@click.command()
@click.argument("event_json", metavar="EVENT_JSON")
@click.option("--key", default=None, help="Routing key (default: the event's user_id).")
@click.option(
    "--explain", is_flag=True, help="Also show the rules tried in order, which matched, and why others did not."
)
@json_option
@click.pass_context
def evaluate(ctx: click.Context, event_json: str, key: str | None, explain: bool, as_json: bool) -> None:
    """Decide one event (a JSON object, or @file, or @- for stdin) on the version serving its key."""
    event = _read_event(event_json)
    with managed(ctx) as state:
        manager = state.open(create=False)
        if manager.get_active_version_id() is None:
            raise CommandFailed(
                f"nothing is deployed on {state.shown_url}, so there is no version to decide the event; "
                "deploy a bundle first: 'rule-engine deploy BUNDLE'"
            )
        decision = RuleEngine(manager).evaluate(event, key=key)
        snapshot = manager.snapshot
        table = next(
            (t for t in (snapshot.candidate, snapshot.stable) if t is not None and t.version_id == decision.version_id),
            None,
        )
        # while the store is open: a manager's table reads its bundle back from the store on demand
        trace = explanation(table, event) if explain and table is not None else []
    data = decision.as_dict()
    if explain:
        data["explain"] = trace

    def human() -> None:
        echo(f"decision: {decision.decision}")
        echo(f"rule:     {decision.rule_id or '(none matched: default decision)'}")
        if decision.reason:
            echo(f"reason:   {decision.reason}")
        if decision.params:
            echo(f"params:   {json.dumps(data['params'], sort_keys=True)}")
        echo(f"version:  {decision.version_id or '(none)'}")
        if decision.error:
            echo(f"error:    {decision.error}")
        if explain:
            echo("rules, in the order they are tried:")
            for step in trace:
                echo(f"  {step['outcome']:<14} {step['rule_id']}" + (f"  ({step['why']})" if step["why"] else ""))

    emit(as_json, data, human)


def explanation(table: RuleTable, event: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule of ``table`` and what it did on ``event``: matched, no match, error, not tried, not applicable."""
    tried = table.explain(event)
    outcomes = dict(tried)
    matched = next((rid for rid, what in tried if what == "matched"), None)
    steps = [{"rule_id": rid, "outcome": what.split(":")[0], "why": _why(what)} for rid, what in tried]
    for rule in table.bundle.rules:
        if rule.id in outcomes:
            continue
        applies = (rule.agents is None or event.get("agent_id") in rule.agents) and (
            rule.flows is None or event.get("flow_id") in rule.flows
        )
        if applies:
            steps.append({"rule_id": rule.id, "outcome": "not tried", "why": f"rule {matched} decided first"})
        else:
            scope = ", ".join(
                f"{name} {list(values)}" for name, values in (("agents", rule.agents), ("flows", rule.flows)) if values
            )
            steps.append({"rule_id": rule.id, "outcome": "not applicable", "why": f"only for {scope}"})
    return steps


def _why(what: str) -> str:
    if what == "matched":
        return "its condition holds"
    if what == "no match":
        return "its condition does not hold"
    return what.partition(": ")[2]


# --- schema ----------------------------------------------------------------------------------------


@click.command()
@json_option
def schema(as_json: bool) -> None:
    """Print the JSON Schema of the bundle format (always JSON; --json is accepted for symmetry)."""
    try:
        from rule_engine.bundle.schema import bundle_json_schema  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CommandFailed("the bundle JSON Schema is not available in this version of rule_engine") from None
    click.echo(json.dumps(bundle_json_schema(), indent=2))
