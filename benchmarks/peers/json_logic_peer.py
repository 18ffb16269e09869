"""Peer: JsonLogic in Python, the benchmark's evaluate case.

    benchmarks/.venvs/json_logic/bin/python benchmarks/peers/json_logic_peer.py [--repeat 15]

Installed from PyPI as ``json-logic-qubit`` (module ``json_logic``), the maintained Python 3
fork of ``json-logic``: ``json-logic`` 0.6.3 itself is Python 2 code (``tests.keys()[0]``)
and raises ``TypeError`` on Python 3.11 at its first call.

The 10 rules of the (agent 7, flow 3) cell become ONE JsonLogic ``if`` chain in priority
order (``{"if": [c1, 0, c2, 1, ..., -1]}``) returning the index of the first matching rule.
``eq`` is strict ``===``; ``starts_with`` is ``substr(x, 0, len(prefix)) === prefix``.
``prepare`` = ``json.loads`` of the rule's JSON text (JsonLogic has no compiled form: the
parsed JSON is what ``jsonLogic`` interprets); ``evaluate`` = one ``jsonLogic`` call.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from _peer_common import INFIX_OPS, cell_case, cell_repeat, emit_cell, outcome_at
from json_logic import jsonLogic  # type: ignore[import-not-found]


def translate(node: Mapping[str, Any]) -> Any:
    if "all" in node:
        return {"and": [translate(c) for c in node["all"]]}
    if "any" in node:
        return {"or": [translate(c) for c in node["any"]]}
    if "not" in node:
        return {"!": [translate(node["not"])]}
    x, op, v = {"var": node["field"]}, node["op"], node.get("value")
    if op in INFIX_OPS:  # strict equality: === / !==
        return {{"eq": "===", "ne": "!=="}.get(op, INFIX_OPS[op]): [x, v]}
    if op == "in":
        return {"in": [x, v]}
    if op == "starts_with":
        return {"===": [{"substr": [x, 0, len(v)]}, v]}
    raise ValueError(f"op {op!r} not translated")


def main(argv: list[str] | None = None) -> int:
    repeat = cell_repeat(argv)
    _, rules, event, want = cell_case()
    chain: list[Any] = []
    for i, r in enumerate(rules):
        chain += [translate(r["when"]), i]
    text = json.dumps({"if": [*chain, -1]})
    logic = json.loads(text)

    def evaluate() -> tuple[str, str | None]:
        return outcome_at(rules, jsonLogic(logic, event))

    emit_cell(
        "json-logic (json-logic-qubit)",
        version("json-logic-qubit"),
        evaluate,
        lambda: json.loads(text),
        evaluate(),
        want,
        repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
