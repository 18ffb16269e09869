"""Peer: the PyPI ``rule-engine`` package on the benchmark's evaluate case (one cell).

    benchmarks/.venvs/pypi_rule_engine/bin/python benchmarks/peers/pypi_rule_engine_cell.py [--repeat 15]

The 10 rules of the (agent 7, flow 3) cell, translated as in pypi_rule_engine.py (one
``rule_engine.Rule`` per rule, ``rule.matches`` in priority order until one matches).
``prepare`` = the 10 ``Rule(text)`` constructions from the expression texts.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from _peer_common import cell_case, cell_repeat, emit_cell
from pypi_rule_engine import translate

import rule_engine  # type: ignore[import-untyped]  # the PyPI package, NOT this project's rule_engine


def main(argv: list[str] | None = None) -> int:
    repeat = cell_repeat(argv)
    warnings.simplefilter("error")
    if "site-packages" not in (rule_engine.__file__ or ""):
        raise SystemExit(f"imported the wrong rule_engine: {rule_engine.__file__}")
    _, rules, event, want = cell_case()
    texts = [(translate(r["when"]), (r["then"]["decision"], r["id"])) for r in rules]
    context = rule_engine.Context(default_value=None)

    def prepare() -> list[tuple[Any, tuple[str, str]]]:
        return [(rule_engine.Rule(text, context=context), outcome) for text, outcome in texts]

    compiled = prepare()

    def evaluate() -> tuple[str, str | None]:
        for rule, outcome in compiled:
            if rule.matches(event):
                return outcome
        return "default", None

    emit_cell("pypi:rule-engine", rule_engine.__version__, evaluate, prepare, evaluate(), want, repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
