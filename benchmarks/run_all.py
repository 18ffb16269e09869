"""Run every benchmark (issues 2, 3 and 4, and the peers) and print every figure as a ratio.

    .venv/bin/python benchmarks/run_all.py [--quick] [--no-peers] [--repeat 25] [--json PATH] [--strict]

Each figure is printed next to the baseline it is divided by, measured in the same process and run
(H = a bare ``mmh3.hash`` of a 16-char key, call = a bare method call, or the ideal hand-written
code), with its goal and PASS/MISS. The peers (PyPI ``rule-engine``, Unleash, LaunchDarkly,
GrowthBook; see ``benchmarks/peers``) run in their own venvs and are expressed against the H and
bare call measured in *their* process. ``--quick`` is a smoke run (few repeats, no 100k-rule table,
short thread phases, peers with few repeats); its figures are not for the record. Exit status is 0
unless a benchmark fails to run (``--strict``: 1 if any goal is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent / "bundles"), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_health  # noqa: E402
import bench_manager  # noqa: E402
import bench_table  # noqa: E402
from _timing import Report, Row  # noqa: E402
from peers.run_peers import CELL_PEERS, format_cell_table, format_table, run_peers  # noqa: E402


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def markdown(reports: list[Report]) -> str:
    """Every report as a Markdown table (absolute figures alongside the ratios)."""
    out: list[str] = []
    for report in reports:
        unit = "us" if "swap latency" in report.title else ("bytes/rule" if "memory of" in report.title else "ns")
        scale = 1000.0 if unit == "us" else 1.0
        out.append(f"**{report.title}**  ")
        out.append("baselines: " + ", ".join(f"{k} = {v:,.1f} ns" for k, v in report.baselines.items()))
        out.append("")
        out.append(f"| case | {unit} | ratio | goal | result |")
        out.append("| --- | ---: | ---: | ---: | --- |")
        for r in report.rows:
            goal = f"<= {r.goal:g}x" if r.goal is not None else "-"
            ratio = f"{r.ratio:,.2f}x {r.baseline}" if r.ratio is not None else "-"
            out.append(f"| {r.name.strip()} | {r.ns / scale:,.1f} | {ratio} | {goal} | {r.status or '-'} |")
        out.append("")
    return "\n".join(out)


def find_row(reports: list[Report], name: str) -> Row:
    for report in reports:
        for row in report.rows:
            if row.name == name:
                return row
    raise KeyError(name)


def peer_report(ours: list[Report], peers: dict[str, dict[str, Any]]) -> Report:
    """Our figures and the peers' side by side, each in H of its own process."""
    report = Report(title="peers side by side (each figure in H of its own process: x H = ns / H)")
    evaluate = next(
        r for rep in ours for r in rep.rows if r.name.startswith("RuleTable.evaluate") and "(in H)" in r.name
    )
    route = find_row(ours, "route(key), hash included")
    engine = find_row(ours, "RuleEngine.evaluate(event, key) -> candidate")
    report.baseline("H (ours)", evaluate.ns / (evaluate.ratio or 1))
    report.add(f"ours: {evaluate.name.removesuffix(' (in H)')}, indexed", evaluate.ns, baseline="H (ours)")
    report.add("ours: RuleEngine.evaluate(event, key), canary", engine.ns, baseline="H (ours)")
    report.add("ours: DeploymentManager.route(key)", route.ns, baseline="H (ours)")
    for name, result in peers.items():
        if "unavailable" in result:
            continue
        h = result.get("baseline_ns", {}).get("H")
        if not h:
            continue
        base = f"H ({name})"
        report.baseline(base, h)
        for case, ns in result["ns"].items():
            report.add(f"{result['peer']} {result['version']}: {case}", ns, baseline=base)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fast smoke run (figures not for the record)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer SDKs")
    parser.add_argument("--repeat", type=int, default=25, help="timing repeats per case")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write every figure as Markdown tables")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any goal is missed")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    info = machine()
    command = " ".join([".venv/bin/python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}")
    print(
        f"# machine: {info['nproc']} CPUs, {info['implementation']} {info['python']}, {info['platform']}"
        + (" -- QUICK smoke run, not for the record" if args.quick else "")
    )
    print(f"# load average at start: {_load()}")
    sys.stdout.flush()

    reports: list[Report] = []
    table_reports, extra = bench_table.run(quick=args.quick, repeat=args.repeat)
    raw10k: bytes = extra["raw10k"]
    _show(reports, table_reports)
    _show(reports, bench_manager.run(quick=args.quick, repeat=args.repeat, bundle_json=raw10k))
    _show(reports, bench_health.run(quick=args.quick, repeat=args.repeat, bundle_json=raw10k))

    peers: dict[str, dict[str, Any]] = {}
    if not args.no_peers:
        with tempfile.TemporaryDirectory(prefix="run-all-") as tmp:
            path = Path(tmp) / "synthetic-10k.json"
            path.write_bytes(raw10k)
            quick_args = ["--repeat", "3"]
            peer_args = (
                {
                    "pypi_rule_engine": [*quick_args, "--no-scan"],
                    "unleash": quick_args,
                    "launchdarkly": quick_args,
                    "growthbook": quick_args,
                    **dict.fromkeys(CELL_PEERS, quick_args),
                }
                if args.quick
                else None
            )
            peers = run_peers(str(path), peer_args=peer_args)
        print("== peers (ns per call; x H / x call against each peer's own in-process baselines)")
        print(format_table(peers))
        print("== evaluate case side by side (issue 14 item 6: 10 rules of one cell, match at the 6th)")
        print(format_cell_table(peers))
        _show(reports, [peer_report(reports, peers)])

    goals = [r for rep in reports for r in rep.rows if r.status]
    missed = [r for r in goals if r.status == "MISS"]
    print(f"== summary: {len(goals) - len(missed)} of {len(goals)} goals PASS", end="")
    print(f"; MISS: {', '.join(f'{r.name} ({r.ratio:.2f}x, goal {r.goal:g}x)' for r in missed)}" if missed else "")
    print(f"# total wall time {time.perf_counter() - started:.0f} s; load average at end: {_load()}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(reports) + "\n", encoding="utf-8")
    if args.json:
        out = {
            "command": command,
            "machine": info,
            "load_average_end": _load(),
            "quick": args.quick,
            "reports": [r.to_json() for r in reports],
            "peers": peers,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 1 if args.strict and missed else 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _show(into: list[Report], reports: list[Report]) -> None:
    for report in reports:
        report.print()
        print()
        into.append(report)
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
