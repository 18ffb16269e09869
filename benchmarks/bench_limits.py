"""Prepare cost of bundles at the limits (hardening issue, D18-D21): time and memory, as ratios.

    .venv/bin/python benchmarks/bench_limits.py [--quick] [--json PATH]

Each generated bundle is prepared (``parse_bundle`` + ``RuleTable.from_bundle``) and compared with
a baseline measured in the same run on the same bytes:

* time: thread CPU time of prepare / ``json.loads`` of the bundle's bytes (best of rounds);
* memory: tracemalloc peak while the table is built / the bundle's size in bytes;
* scaling: prepare time at 2x the size / at 1x (linear: about 2; quadratic: about 4).

The bundles: ``wide`` (one rule naming N agents, one naming N flows, one naming N/2 agents x 100
flows: D18's N x N cells), ``huge`` (one rule of N leaves: D19's quadratic compile), ``shapes``
(N rules of N distinct condition shapes: every one compiled, the shape cache bounded, D21) and
``synthetic`` (the ordinary 10 rules per agent/flow pair of bench_table). ``tests/test_cost_bounds.py``
asserts generous bounds on the same figures at smaller sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE.parent / "bundles")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from rule_engine import RuleTable, parse_bundle  # noqa: E402
from rule_engine.evaluation.compiler import clear_shape_cache  # noqa: E402

_OPS = [("eq", "x"), ("gt", 5), ("in", ["a", "b"]), ("starts_with", "p"), ("matches", "^a+b"), ("contains", "v")]


def _document(rules: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"bundle_id": "limits", "version": "1", "default": {"decision": "allow"}, "rules": rules}
    ).encode()


def wide_bundle(n: int) -> bytes:
    """D18: N agents in one rule, N flows in another, N/2 agents x 100 flows in a third."""
    return _document(
        [
            {"id": "agents", "agents": [f"agent-{i}" for i in range(n)], "then": {"decision": "deny"}},
            {"id": "flows", "priority": 5, "flows": [f"flow-{i}" for i in range(n)], "then": {"decision": "review"}},
            {
                "id": "both",
                "priority": 9,
                "agents": [f"agent-{i}" for i in range(0, n, 2)],
                "flows": [f"flow-{i}" for i in range(100)],
                "then": {"decision": "challenge"},
            },
        ]
    )


def huge_rule_bundle(leaves: int) -> bytes:
    """D19: one rule of ``leaves`` leaves (all of any-lists of 10,000, the list limit)."""
    items = [
        {"field": f"f{i % 50}.x{i % 7}", "op": _OPS[i % 6][0], "value": _OPS[i % 6][1] if i % 6 else f"v{i}"}
        for i in range(leaves)
    ]
    groups = [{"any": items[i : i + 10_000]} for i in range(0, leaves, 10_000)]
    return _document([{"id": "huge", "when": {"all": groups}, "then": {"decision": "deny"}}])


def _shape(i: int) -> dict[str, Any]:
    """A condition whose shape (operators, nesting, path lengths) is different for every ``i``."""
    digits = []
    while True:
        digits.append(i % 6)
        i //= 6
        if not i:
            break
    leaves: list[dict[str, Any]] = []
    for depth, digit in enumerate(digits):
        op, value = _OPS[digit]
        field = ".".join(["a"] * (depth % 3 + 1))
        leaves.append({"field": field, "op": op, "value": value})
    condition: dict[str, Any] = {"all": leaves} if len(digits) % 2 else {"any": leaves}
    return {"not": condition} if len(digits) % 3 == 0 else condition


def shapes_bundle(n: int) -> bytes:
    """D21: ``n`` rules, each of a distinct condition shape."""
    return _document([{"id": f"r{i}", "when": _shape(i), "then": {"decision": "deny"}} for i in range(n)])


def synthetic(n_pairs: int) -> bytes:
    """The ordinary case: 10 rules per (agent, flow) pair."""
    from generate_synthetic import synthetic_bundle

    agents = max(1, n_pairs // 20)
    return json.dumps(synthetic_bundle(agents, 20, 10)).encode()


BUNDLES: dict[str, Callable[[int], bytes]] = {
    "wide": wide_bundle,
    "huge": huge_rule_bundle,
    "shapes": shapes_bundle,
    "synthetic": synthetic,
}


def _cpu(fn: Callable[[], Any]) -> float:
    """Thread CPU seconds of one call, compiled-shape cache cold (every round compiles anew)."""
    clear_shape_cache()
    gc.collect()
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def traced_build(bundle: Any) -> tuple[RuleTable, int]:
    """The table of a parsed bundle, and the tracemalloc peak (bytes) while it was built."""
    gc.collect()
    tracemalloc.start()
    try:
        table = RuleTable.from_bundle(bundle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return table, peak


def measure(raw: bytes, *, rounds: int = 3, memory: bool = True) -> dict[str, float]:
    """Prepare time and memory of one bundle, with the json.loads baseline of the same bytes."""
    baseline = min(_cpu(lambda: json.loads(raw)) for _ in range(max(rounds, 5)))
    prepare = min(_cpu(lambda: RuleTable.from_bundle(parse_bundle(raw))) for _ in range(rounds))
    figures = {
        "bytes": float(len(raw)),
        "json_loads_s": baseline,
        "prepare_s": prepare,
        "prepare_vs_json": prepare / max(baseline, 1e-6),
    }
    if memory:
        _, peak = traced_build(parse_bundle(raw))
        figures["table_peak_bytes"] = float(peak)
        figures["table_peak_vs_bytes"] = peak / len(raw)
    return figures


def scaling(make: Callable[[int], bytes], n: int, *, factor: int = 2, rounds: int = 2) -> float:
    """Prepare time at ``factor * n`` over prepare time at n (about ``factor`` when linear)."""
    small, large = make(n), make(factor * n)
    t_small = min(_cpu(lambda: RuleTable.from_bundle(parse_bundle(small))) for _ in range(rounds))
    t_large = min(_cpu(lambda: RuleTable.from_bundle(parse_bundle(large))) for _ in range(rounds))
    return t_large / max(t_small, 1e-6)


SIZES = {"wide": 10_000, "huge": 100_000, "shapes": 10_000, "synthetic": 1_000}
QUICK_SIZES = {"wide": 2_000, "huge": 20_000, "shapes": 2_000, "synthetic": 200}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller bundles (smoke run)")
    parser.add_argument("--json", type=Path, help="write every figure as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    results: dict[str, dict[str, float]] = {}
    print("== bundles at the limits: prepare = parse_bundle + RuleTable.from_bundle (thread CPU time)")
    header = f"{'bundle':<18}{'bytes':>12}{'json.loads':>12}{'prepare':>10}{'ratio':>9}{'mem/byte':>10}{'2x/1x':>8}"
    print(header)
    for name, make in BUNDLES.items():
        n = sizes[name]
        figures = measure(make(n))
        figures["scaling_2x"] = scaling(make, n // 2)
        results[f"{name}-{n}"] = figures
        print(
            f"{name + '-' + str(n):<18}{figures['bytes']:>12,.0f}{figures['json_loads_s'] * 1e3:>10.1f}ms"
            f"{figures['prepare_s']:>9.2f}s{figures['prepare_vs_json']:>8.0f}x"
            f"{figures['table_peak_vs_bytes']:>9.1f}x{figures['scaling_2x']:>8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
