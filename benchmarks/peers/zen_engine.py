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

import argparse
import json
import sys
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

import zen  # type: ignore[import-not-found]
from _peer_common import cell_case, emit_cell


def translate(node: Mapping[str, Any]) -> str:
    if "all" in node:
        return "(" + " and ".join(translate(c) for c in node["all"]) + ")"
    if "any" in node:
        return "(" + " or ".join(translate(c) for c in node["any"]) + ")"
    if "not" in node:
        return f"(not ({translate(node['not'])}))"
    x, op, v = node["field"], node["op"], node.get("value")
    binary = {"eq": "==", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
    if op in binary:
        return f"({x} {binary[op]} {json.dumps(v)})"
    if op == "in":
        return f"({x} in {json.dumps(v)})"
    if op == "starts_with":
        return f"startsWith({x}, {json.dumps(v)})"
    raise ValueError(f"op {op!r} not translated")


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
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    _, rules, event, want = cell_case()
    content = decision_json(rules)
    outcomes = [(r["then"]["decision"], r["id"]) for r in rules]
    engine = zen.ZenEngine()
    decision = engine.create_decision(content)

    def evaluate() -> tuple[str, str | None]:
        i = int(decision.evaluate(event)["result"]["rule"])
        return outcomes[i] if i >= 0 else ("default", None)

    emit_cell(
        "zen-engine",
        version("zen-engine"),
        evaluate,
        lambda: engine.create_decision(content),
        evaluate(),
        want,
        args.repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
