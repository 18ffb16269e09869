"""Peer: ``common-expression-language`` (CEL, module ``cel``), the benchmark's evaluate case.

    benchmarks/.venvs/cel/bin/python benchmarks/peers/cel_peer.py [--repeat 15]

The 10 rules of the (agent 7, flow 3) cell become ONE CEL expression, a chain of
conditionals in priority order (``c1 ? 0 : c2 ? 1 : ... : -1``) returning the index of the
first matching rule: one ``Program.execute`` per event, so the event is converted to CEL
values once (10 separate programs would convert it up to 10 times). ``prepare`` =
``cel.compile`` of that text; ``evaluate`` = one ``execute`` plus the index lookup.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from typing import Any

import cel  # type: ignore[import-not-found]  # the PyPI package (separate venv); this file is cel_peer.py so as not to shadow it
from _peer_common import INFIX_OPS, cell_case, cell_repeat, emit_cell, infix_translator, outcome_at


def _lit(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    raise TypeError(value)


def _leaf(x: str, op: str, v: Any) -> str:
    if op in INFIX_OPS:
        return f"({x} {INFIX_OPS[op]} {_lit(v)})"
    if op == "in":
        return f"({x} in {_lit(v)})"
    if op == "starts_with":
        return f"({x}.startsWith({_lit(v)}))"
    raise ValueError(f"op {op!r} not translated")


translate = infix_translator("&&", "||", "(!{})", _leaf)


def main(argv: list[str] | None = None) -> int:
    repeat = cell_repeat(argv)
    _, rules, event, want = cell_case()
    text = "".join(f"{translate(r['when'])} ? {i} : " for i, r in enumerate(rules)) + "-1"
    program = cel.compile(text)

    def evaluate() -> tuple[str, str | None]:
        return outcome_at(rules, program.execute(event))

    emit_cell(
        "cel (common-expression-language)",
        version("common-expression-language"),
        evaluate,
        lambda: cel.compile(text),
        evaluate(),
        want,
        repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
