"""This project's figures on the benchmark's evaluate case, for the peers' side-by-side table.

    .venv/bin/python benchmarks/peers/ours_cell.py [--repeat 15]

Runs in the PROJECT venv (run_peers.py starts it with its own interpreter). Same cell, event
and check as the peer scripts: ``evaluate`` = ``RuleTable.evaluate(event)`` on the table of
the cell's 10 rules; ``prepare`` = ``RuleTable.from_bundle(parse_bundle(raw))`` of that
bundle's JSON bytes (parse + validate + compile + index).
"""

from __future__ import annotations

import json
import sys

from _peer_common import cell_case, cell_repeat, emit_cell

from rule_engine import RuleTable, parse_bundle


def main(argv: list[str] | None = None) -> int:
    repeat = cell_repeat(argv)
    bundle, _, event, want = cell_case()
    raw = json.dumps(bundle).encode("utf-8")
    table = RuleTable.from_bundle(parse_bundle(raw))
    decided = table.evaluate(event)
    emit_cell(
        "ours (rule_engine)",
        "this repo",
        (table.evaluate, (event,)),
        lambda: RuleTable.from_bundle(parse_bundle(raw)),
        (decided.decision, decided.rule_id),
        want,
        repeat,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
