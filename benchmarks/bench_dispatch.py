"""Many rules in one (agent, flow) pair: RuleTable.evaluate instructions per call (callgrind), issue 14 item 5.

    .venv/bin/python benchmarks/bench_dispatch.py [--calls 20000] [--cases a,b] [--repo PATH] [--json PATH]
    .venv/bin/python benchmarks/bench_dispatch.py --memory [--repo PATH]     # bytes per rule kept instead

Each case runs under ``valgrind --tool=callgrind`` twice after the same set-up, with 0 and with
``--calls`` calls; the difference divided by ``--calls`` is its instructions per call (repeatable
on a loaded machine). ``--repo`` runs the same cases against another checkout of the library (for
example ``git archive <commit>`` unpacked), to compare before and after in one run.

Cases (one pair ``api_gateway/login``, the event matching the *last* rule, the worst case of a scan):

* ``eq10`` / ``eq1000``: 10 / 1,000 rules ``tier == "t<i>"`` (goal: 1,000 <= 3x 10);
* ``in1000``: 1,000 rules ``country in [3 values]``;
* ``interleaved1000``: 1,000 rules alternating ``tier == ...`` and ``score > ...`` (no run of
  two like tests: nothing is dispatched; must not be slower than before);
* ``synthetic``: the 10 agents x 5 flows x 10 rules synthetic bundle of bench_hotpath.py (mixed
  shapes, rule 6 matches; must not be slower than before).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("eq10", "eq1000", "in1000", "interleaved1000", "synthetic")
AGENT, FLOW = "api_gateway", "login"


def _rule(i: int, when: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"r{i}", "agents": [AGENT], "flows": [FLOW], "when": when, "then": {"decision": "deny"}}


def _pair_bundle(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bundle_id": "many", "version": "1.0.0", "default": {"decision": "allow"}, "rules": rules}


def raw_case(name: str) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(the bundle's JSON, the event, the rule id it must give) for one case."""
    base = {"agent_id": AGENT, "flow_id": FLOW}
    if name in ("eq10", "eq1000"):
        n = 10 if name == "eq10" else 1000
        raw = _pair_bundle([_rule(i, {"field": "tier", "op": "eq", "value": f"t{i}"}) for i in range(n)])
        event, expected = {**base, "tier": f"t{n - 1}"}, f"r{n - 1}"
    elif name == "in1000":
        values = [[f"c{i}a", f"c{i}b", f"c{i}c"] for i in range(1000)]
        raw = _pair_bundle([_rule(i, {"field": "country", "op": "in", "value": v}) for i, v in enumerate(values)])
        event, expected = {**base, "country": "c999b"}, "r999"
    elif name == "interleaved1000":
        rules = [
            _rule(i, {"field": "tier", "op": "eq", "value": f"t{i}"})
            if i % 2 == 0
            else _rule(i, {"field": "score", "op": "gt", "value": 1000 + i})
            for i in range(1000)
        ]
        raw = _pair_bundle(rules)
        event, expected = {**base, "tier": "t998", "score": 5}, "r998"
    elif name == "synthetic":
        sys.path.insert(0, str(HERE.parent / "bundles"))
        from generate_synthetic import expected_outcome, matching_event, synthetic_bundle

        raw = synthetic_bundle(10, 5, 10)
        event, expected = matching_event(7, 3, 6, rules_per_pair=10), expected_outcome(7, 3, 6, rules_per_pair=10)[1]
    else:
        raise SystemExit(f"unknown case {name!r}")
    return raw, event, expected


def case(name: str) -> tuple[Callable[..., Any], tuple[Any, ...], str | None]:
    """(table.evaluate, (event,), the rule id it must give) for one case."""
    from rule_engine import RuleTable, parse_bundle

    raw, event, expected = raw_case(name)
    table = RuleTable.from_bundle(parse_bundle(json.dumps(raw)))
    got = table.evaluate(event).rule_id
    if got != expected:
        raise SystemExit(f"{name}: evaluate gave {got!r}, expected {expected!r}")
    return table.evaluate, (event,), expected


def retained_per_rule(name: str) -> float:
    """Bytes per rule a case's table keeps alive without its bundle (tracemalloc; shape cache warm)."""
    import gc
    import tracemalloc

    from rule_engine import RuleTable, parse_bundle

    case(name)  # warms the per-shape code cache, as every table shares it
    text = json.dumps(raw_case(name)[0])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    bundle = parse_bundle(text)
    kept = RuleTable.from_bundle(bundle, load=_never)  # as a manager serves it: no bundle model kept
    rules = len(kept)
    del bundle
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / rules


def _never() -> Any:
    raise RuntimeError("not re-read in this benchmark")


def child(name: str, calls: int) -> None:
    fn, args, _ = case(name)
    for _ in range(200):
        fn(*args)
    for _ in range(calls):
        fn(*args)


def instructions(name: str, calls: int, repo: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(repo)}
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__]
        command += ["--child", name, "--calls", str(calls), "--repo", str(repo)]
        subprocess.run(command, check=True, capture_output=True, timeout=1800, env=env)
        with open(out, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise SystemExit(f"callgrind gave no total for {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repo", default=str(HERE.parent), help="checkout whose rule_engine is measured")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    parser.add_argument("--memory", action="store_true", help="bytes per rule kept by each case's table instead")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if args.child is not None or args.memory:
        sys.path.insert(0, str(repo))
    if args.child is not None:
        child(args.child, args.calls)
        return 0
    if args.memory:
        for name in args.cases.split(","):
            print(f"  {name:<18} {retained_per_rule(name):>8,.0f} bytes per rule kept (tracemalloc)", flush=True)
        return 0
    figures = {}
    for name in args.cases.split(","):
        figures[name] = (instructions(name, args.calls, repo) - instructions(name, 0, repo)) / args.calls
        print(f"  {name:<18} {figures[name]:>12,.0f} instructions per evaluate", flush=True)
    if "eq10" in figures and "eq1000" in figures:
        ratio = figures["eq1000"] / figures["eq10"]
        print(f"  eq1000 / eq10       {ratio:8.2f}x  goal <= 3x  {'PASS' if ratio <= 3 else 'MISS'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"repo": str(repo), "per_call": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
