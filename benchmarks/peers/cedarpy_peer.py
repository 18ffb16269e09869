"""Peer: ``cedarpy`` (Cedar policy language), the benchmark's evaluate case.

    benchmarks/.venvs/cedarpy/bin/python benchmarks/peers/cedarpy_peer.py [--repeat 15]

The 10 rules of the (agent 7, flow 3) cell become 10 ``permit`` policies, each tagged
``@id("<rule id>")`` (from_str still names them policy0..policy9 in text order), with the condition in ``when { context... }``. Cedar has no rule order
and only allow/deny, so one ``is_authorized`` evaluates the whole set and our decision is the
highest-priority rule among the determining policies (``diagnostics.reasons``). Cedar has no
floats: numbers become ``decimal(...)`` on both sides. ``prepare`` = ``PolicySet.from_str`` of
the policy text; ``evaluate`` = one ``is_authorized`` with the pre-parsed set and entities.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

import cedarpy  # type: ignore[import-not-found]
from _peer_common import cell_case, cell_repeat, emit_cell, infix_translator


def _lit(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f'decimal("{value:.4f}")'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    raise TypeError(value)


def _leaf(field: str, op: str, v: Any) -> str:
    x = "context." + field
    if op == "eq":
        return f"({x} == {_lit(v)})"
    if op == "in":
        return f"({_lit(v)}.contains({x}))"
    if op == "gte":
        return f"({x}.greaterThanOrEqual({_lit(float(v))}))"
    if op == "lt":
        return f"({x}.lessThan({_lit(float(v))}))"
    if op == "starts_with":
        return f"({x} like {json.dumps(v.replace('*', chr(92) + '*') + '*')})"
    raise ValueError(f"op {op!r} not translated")


translate = infix_translator("&&", "||", "(!{})", _leaf)


def _context(value: Any) -> Any:
    """The event as Cedar JSON: floats as decimal extension values."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
    if isinstance(value, dict):
        return {k: _context(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_context(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    repeat = cell_repeat(argv)
    _, rules, event, want = cell_case()
    text = "\n".join(
        f'@id("{r["id"]}")\npermit(principal, action, resource) when {{ {translate(r["when"])} }};' for r in rules
    )
    # PolicySet.from_str names the policies policy0, policy1, ... in text order (priority order)
    rank = {f"policy{i}": i for i in range(len(rules))}
    rule_of = {f"policy{i}": (r["then"]["decision"], r["id"]) for i, r in enumerate(rules)}
    policies = cedarpy.PolicySet.from_str(text)
    entities = cedarpy.Entities.from_json_str("[]") if hasattr(cedarpy.Entities, "from_json_str") else []
    request = {
        "principal": 'User::"u"',
        "action": 'Action::"evaluate"',
        "resource": 'Flow::"f"',
        "context": _context(dict(event)),
    }

    def evaluate() -> tuple[str, str | None]:
        result = cedarpy.is_authorized(request, policies, entities)
        reasons = result.diagnostics.reasons
        if not reasons:
            return "default", None
        return rule_of[min(reasons, key=rank.__getitem__)]

    emit_cell(
        "cedarpy", version("cedarpy"), evaluate, lambda: cedarpy.PolicySet.from_str(text), evaluate(), want, repeat
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
