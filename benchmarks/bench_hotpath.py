"""Hot-path instruction counts (callgrind) and timings: RuleEngine.evaluate vs the ideal, in one run.

    .venv/bin/python benchmarks/bench_hotpath.py [--calls 20000] [--rules-per-pair 10] [--json PATH]
    .venv/bin/python benchmarks/bench_hotpath.py --timing [--repeat 25]

Instruction counts are repeatable on a loaded machine: each case runs under
``valgrind --tool=callgrind`` twice, with 0 and with ``--calls`` calls after the same set-up, and
the difference divided by ``--calls`` is its instructions per call. Cases (all during a 10% canary
on a synthetic bundle of 10 agents x 5 flows (per-call cost does not depend on the table's size:
the index is two dictionary lookups; the timing benchmark, bench_manager.py, uses 10k rules), first match at rule 6 of the pair):

* ``ideal_route`` / ``ideal_e2e``: benchmarks/ideal.py (hash, bucket, pick; + IdealEvaluator);
* ``route``: ``DeploymentManager.route(key)``; ``evaluate_stable`` / ``evaluate_candidate``:
  ``RuleEngine.evaluate(event, key)`` routed to each side; ``evaluate_unrecorded``: the same call
  with the snapshot's recorders removed (what recording costs is the difference).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent / "bundles"), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

CASES = (
    "ideal_route",
    "route",
    "ideal_e2e",
    "evaluate_stable",
    "evaluate_candidate",
    "evaluate_unrecorded",
)


def build(
    rules_per_pair: int, agents: int = 10, flows: int = 5
) -> dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]:
    """Every case as (function, args), set up the same way whatever case is run."""
    from bench_manager import CANARY_BP, canary_manager, keys_by_side
    from generate_synthetic import matching_event, synthetic_bundle
    from ideal import HASH_KEY, IdealEvaluator, ideal_route

    from rule_engine import RuleEngine, parse_bundle
    from rule_engine.serving.snapshot import ServingCell

    raw = synthetic_bundle(agents, flows, rules_per_pair)
    text = json.dumps(raw).encode()
    bundle = parse_bundle(text)
    manager, _, candidate = canary_manager(bundle)
    engine = RuleEngine(manager)
    snapshot = manager.serving_cell.current
    bare = dataclasses.replace(snapshot, stable_recorder=None, candidate_recorder=None)
    unrecorded = RuleEngine(ServingCell(bare))
    ideal_stable = IdealEvaluator.from_bundle(json.loads(text))
    ideal_candidate = IdealEvaluator.from_bundle(json.loads(text))
    event = matching_event(7, 3, 6, rules_per_pair=rules_per_pair)
    stable_key, candidate_key = keys_by_side(manager, candidate)

    def ideal_e2e(event: Any, key: str) -> Any:
        return ideal_route(key, CANARY_BP, ideal_stable, ideal_candidate).evaluate(event)

    return {
        "ideal_route": (ideal_route, (HASH_KEY, CANARY_BP, "stable", "candidate")),
        "route": (manager.route, (HASH_KEY,)),
        "ideal_e2e": (ideal_e2e, (event, HASH_KEY)),
        "evaluate_stable": (engine.evaluate, (event, stable_key)),
        "evaluate_candidate": (engine.evaluate, (event, candidate_key)),
        "evaluate_unrecorded": (unrecorded.evaluate, (event, candidate_key)),
    }


def child(case: str, calls: int, rules_per_pair: int) -> None:
    """Set up every case, then call one ``calls`` times (run under callgrind by the parent)."""
    fn, args = build(rules_per_pair)[case]
    for _ in range(200):  # warm the specialising interpreter the same way in both runs
        fn(*args)
    for _ in range(calls):
        fn(*args)


def instructions(case: str, calls: int, rules_per_pair: int) -> int:
    """Total instructions callgrind counts for one child run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            case,
            "--calls",
            str(calls),
            "--rules-per-pair",
            str(rules_per_pair),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=1800)
        with open(out, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("summary:") or line.startswith("totals:"):
                    return int(line.split()[1])
    raise SystemExit(f"callgrind gave no total for {case}")


def per_call(case: str, calls: int, rules_per_pair: int) -> float:
    """Instructions per call of one case: (run with ``calls`` calls - run with 0) / calls."""
    return (instructions(case, calls, rules_per_pair) - instructions(case, 0, rules_per_pair)) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rules-per-pair", type=int, default=10)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.calls, args.rules_per_pair)
        return 0
    figures = {case: per_call(case, args.calls, args.rules_per_pair) for case in args.cases.split(",")}
    ratios = {
        "route / ideal_route": ("route", "ideal_route", 1.2),
        "evaluate_stable / ideal_e2e": ("evaluate_stable", "ideal_e2e", 1.3),
        "evaluate_candidate / ideal_e2e": ("evaluate_candidate", "ideal_e2e", 1.3),
        "evaluate_candidate / evaluate_unrecorded": ("evaluate_candidate", "evaluate_unrecorded", 1.1),
    }
    print(f"instructions per call (callgrind, {args.calls:,} calls minus 0 calls)")
    for case, value in figures.items():
        print(f"  {case:<22} {value:>10,.0f}")
    results = {}
    for name, (top, bottom, goal) in ratios.items():
        if top in figures and bottom in figures:
            ratio = figures[top] / figures[bottom]
            results[name] = ratio
            print(f"  {name:<42} {ratio:5.2f}x  goal <= {goal}x  {'PASS' if ratio <= goal else 'MISS'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"per_call": figures, "ratios": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
