"""Peer: ``zen-engine`` (GoRules Zen, module ``zen``), the benchmark's evaluate case.

    benchmarks/.venvs/zen_engine/bin/python benchmarks/peers/zen_engine.py [--repeat 15]

The 10 rules of the (agent 7, flow 3) cell become one decision table (``hitPolicy: first``),
one row per rule in priority order, between an input and an output node. The table has one
input column with no field, so each cell is a full Zen expression over the event
(``startsWith(request.path, "/api/admin/")``, ``geo.country in ["ET", "CU"]``, ...), and a
last catch-all row gives the default. ``prepare`` = ``ZenEngine().create_decision`` from the
JSON content; ``evaluate`` = one ``ZenDecision.evaluate(event)``.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

import zen  # type: ignore[import-not-found]
from _peer_common import INFIX_OPS, cell_case, cell_repeat, emit_cell, infix_translator, outcome_at


def _leaf(x: str, op: str, v: Any) -> str:
    if op in INFIX_OPS:
        return f"({x} {INFIX_OPS[op]} {json.dumps(v)})"
    if op == "in":
        return f"({x} in {json.dumps(v)})"
    if op == "starts_with":
        return f"startsWith({x}, {json.dumps(v)})"
    raise ValueError(f"op {op!r} not translated")


translate = infix_translator("and", "or", "(not ({}))", _leaf)


def decision_json(rules: list[dict[str, Any]]) -> str:
    rows = [{"_id": f"row{i}", "cond": translate(r["when"]), "out": str(i)} for i, r in enumerate(rules)]
    rows.append({"_id": "default", "cond": "", "out": "-1"})
    table = {
        "hitPolicy": "first",
        "inputs": [{"id": "cond", "name": "condition", "field": ""}],
        "outputs": [{"id": "out", "name": "rule", "field": "rule"}],
        "rules": rows,
    }
    nodes = [
        {"id": "in", "type": "inputNode", "name": "event", "position": {"x": 0, "y": 0}},
        {"id": "table", "type": "decisionTableNode", "name": "rules", "position": {"x": 1, "y": 0}, "content": table},
        {"id": "out", "type": "outputNode", "name": "decision", "position": {"x": 2, "y": 0}},
    ]
    edges = [
        {"id": "e1", "sourceId": "in", "targetId": "table", "type": "edge"},
        {"id": "e2", "sourceId": "table", "targetId": "out", "type": "edge"},
    ]
    return json.dumps({"nodes": nodes, "edges": edges})


def main(argv: list[str] | None = None) -> int:
    repeat = cell_repeat(argv)
    _, rules, event, want = cell_case()
    content = decision_json(rules)
    engine = zen.ZenEngine()
    decision = engine.create_decision(content)

    def evaluate() -> tuple[str, str | None]:
        return outcome_at(rules, int(decision.evaluate(event)["result"]["rule"]))

    emit_cell(
        "zen-engine",
        version("zen-engine"),
        evaluate,
        lambda: engine.create_decision(content),
        evaluate(),
        want,
        repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
