"""Measure the ideal baselines (benchmarks/ideal.py) on this machine, in one process.

    .venv/bin/python benchmarks/bench_ideal.py [--match-at 6] [--repeat 25] [--json PATH]

Prints ns/call and ratios vs H (bare ``mmh3.hash`` of a 16-char key) and vs a bare
method call, all measured interleaved in this run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mmh3

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bundles")]

from _timing import Report, add_report_args, interleaved, loop_overhead  # noqa: E402
from generate_synthetic import expected_outcome, matching_event, synthetic_bundle  # noqa: E402
from ideal import HASH_KEY, IdealEvaluator, bare_method_call, ideal_route  # noqa: E402

AGENT, FLOW = 7, 3  # the (agent, flow) pair every single-event figure uses


def main(argv: list[str] | None = None) -> int:
    parser = add_report_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--match-at", type=int, default=6)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--flows", type=int, default=20)
    parser.add_argument("--rules-per-pair", type=int, default=10)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    bundle = synthetic_bundle(args.agents, args.flows, args.rules_per_pair)
    evaluator = IdealEvaluator.from_bundle(bundle)
    build_s = time.perf_counter() - t0
    kw = {"rules_per_pair": args.rules_per_pair}
    event = matching_event(AGENT, FLOW, args.match_at, **kw)
    expected = expected_outcome(AGENT, FLOW, args.match_at, **kw)
    if evaluator.evaluate(event) != expected:
        raise SystemExit(f"ideal evaluator is wrong: {evaluator.evaluate(event)} != {expected}")
    default_event = matching_event(AGENT, FLOW, None, **kw)

    ns = interleaved(
        {
            "bare_call": bare_method_call(),
            "H": (mmh3.hash, (HASH_KEY,)),
            "ideal_route": (ideal_route, (HASH_KEY, 1000, "stable", "candidate")),
            "ideal_evaluate": (evaluator.evaluate, (event,)),
            "ideal_evaluate_default": (evaluator.evaluate, (default_event,)),
        },
        repeat=args.repeat,
    )
    report = Report(
        title=(f"ideal baselines: {len(bundle['rules'])} rules, first match at rule {args.match_at} of the pair"),
        meta={"build_s": round(build_s, 3), "loop_overhead_ns": round(loop_overhead(), 2)},
    )
    report.baseline("H", ns["H"])
    report.baseline("call", ns["bare_call"])
    report.add("bare method call", ns["bare_call"], baseline="H")
    report.add("ideal_route (hash, bucket, pick)", ns["ideal_route"], baseline="H")
    report.add(f"ideal evaluate (match at {args.match_at})", ns["ideal_evaluate"], baseline="H")
    report.add(
        f"ideal evaluate (no match, {args.rules_per_pair} tried)",
        ns["ideal_evaluate_default"],
        baseline="H",
    )
    report.add(
        f"ideal evaluate (match at {args.match_at})",
        ns["ideal_evaluate"],
        baseline="call",
    )
    print(f"index build: {build_s:.2f} s; timing-loop overhead {report.meta['loop_overhead_ns']} ns")
    return report.finish(args)


if __name__ == "__main__":
    raise SystemExit(main())
