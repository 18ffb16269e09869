"""Issue 14, memory: what a served table keeps alive, and the RSS of a max_history=10 manager.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--before TREE] [--json PATH]

* **retained per rule** (tracemalloc, everything the object keeps alive, after ``gc.collect()``;
  the per-shape code cache warmed first, as every table shares it): the 10k-rule synthetic table
  as a manager serves it (built with ``load=``: no bundle model kept) against the same table
  holding its bundle (what every table kept before issue 14) and the bundle alone. Goal <= 1.5 KB
  per rule per serving version.
* **RSS** of a fresh process running ``DeploymentManager(max_history=10)`` (memory store) after
  preparing and activating 10 distinct 10k-rule versions, minus the same process before the first
  prepare (``/proc/self/status`` VmRSS, after ``gc.collect()``). Goal <= 0.25 GB. With
  ``--before TREE`` the same process runs on the library in ``TREE`` (e.g. the base commit
  exported with ``git archive c9f2010 | tar -x -C /tmp/base``): the before/after of one run.
* **recompile on demand**: in the same process, a rollback to the rollback target (kept compiled)
  and a second rollback to a version no longer compiled (compiled again from the store), CPU
  seconds, against that process's own prepare of one version.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT / "bundles"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _timing import Report, add_report_args  # noqa: E402
from generate_synthetic import synthetic_bundle  # noqa: E402

from rule_engine import RuleTable, parse_bundle  # noqa: E402

GB = 1024**3

MANAGER = """
import gc, json, logging, sys, time
sys.path[:0] = [sys.argv[1]]
import structlog
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
from generate_synthetic import synthetic_bundle
from rule_engine import DeploymentManager

def rss():
    gc.collect()
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def text(seed):
    document = synthetic_bundle(50, 20, int(sys.argv[3]), seed=seed)
    document["version"] = f"1.0.{seed}"
    return json.dumps(document)

manager = DeploymentManager(max_history=10)
texts = [text(seed) for seed in range(int(sys.argv[2]))]
before = rss()
prepare = None
for body in texts:
    started = time.process_time()
    version = manager.prepare_deployment(body, deployed_by="bench")
    prepare = time.process_time() - started if prepare is None else prepare
    manager.activate_deployment(version)
del texts, body
after = rss()
started = time.process_time(); manager.rollback(); first = time.process_time() - started
started = time.process_time(); manager.rollback(); second = time.process_time() - started
print(json.dumps({"before": before, "after": after, "prepare": prepare, "rollback_kept": first,
                  "rollback_recompiled": second, "history": len(manager.get_deployment_history())}))
"""


def _traced(build: Any) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base, kept
    finally:
        tracemalloc.stop()


def retained(raw: bytes) -> dict[str, float]:
    """Bytes per rule kept alive by: the bundle alone, a table holding it, a table built with a loader."""
    RuleTable.from_bundle(parse_bundle(raw))  # warm the per-shape code cache shared by every table
    text = parse_bundle(raw).canonical
    bundle_bytes, bundle = _traced(lambda: parse_bundle(raw))
    n = len(bundle.rules)
    del bundle
    held_bytes, held = _traced(lambda: RuleTable.from_bundle(parse_bundle(raw)))
    del held
    served_bytes, served = _traced(
        lambda: RuleTable.from_bundle(parse_bundle(raw), version_id="v1", load=lambda: parse_bundle(text))
    )
    assert not served.source.holds
    del served
    return {"bundle": bundle_bytes / n, "held": held_bytes / n, "served": served_bytes / n}


def manager_rss(tree: str | None, versions: int, rules_per_pair: int) -> dict[str, Any]:
    """The RSS figures of a fresh max_history=10 manager process (see the module docstring)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    done = subprocess.run(
        [sys.executable, "-c", MANAGER, str(ROOT / "bundles"), str(versions), str(rules_per_pair)],
        capture_output=True,
        text=True,
        cwd=tree or ROOT,
        env=env,
        timeout=1800,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(*, quick: bool, tree: str | None) -> list[Report]:
    """Both reports: retained bytes per rule (tracemalloc) and the manager's RSS."""
    per_pair = 1 if quick else 10
    raw = json.dumps(synthetic_bundle(50, 20, per_pair)).encode()
    figures = retained(raw)
    table = Report(title=f"issue 14: bytes kept alive per rule, {50 * 20 * per_pair}-rule table (tracemalloc)")
    table.baseline("1.5 KB", 1536.0)
    table.baseline("held", figures["held"])
    table.add("bundle alone", figures["bundle"], baseline="held")
    table.add("table holding its bundle (before)", figures["held"], baseline="1.5 KB")
    table.add("served table, load= (after)", figures["served"], baseline="1.5 KB", goal=1.0)
    table.add("served table vs holding", figures["served"], baseline="held")
    rss = Report(title=f"issue 14: RSS of a max_history=10 manager, 10 versions of {50 * 20 * per_pair} rules")
    rss.baseline("0.25 GB", 0.25 * GB)
    for label, where in (("after", None), ("before", tree)) if tree else (("after", None),):
        got = manager_rss(where, 10, per_pair)
        grown = got["after"] - got["before"]
        rss.add(
            f"{label}: RSS",
            got["after"],
            baseline="0.25 GB",
            goal=1.0 if label == "after" else None,
            note=f"{got['after'] / GB:.3f} GB ({got['history']} versions)",
        )
        rss.add(f"{label}: RSS grown by the versions", grown, baseline="0.25 GB", note=f"{grown / GB:.3f} GB")
        rss.baseline(f"{label} prepare", got["prepare"] * 1e9)
        rss.add(f"{label}: rollback, target compiled", got["rollback_kept"] * 1e9, baseline=f"{label} prepare")
        rss.add(
            f"{label}: rollback, target recompiled from the store",
            got["rollback_recompiled"] * 1e9,
            baseline=f"{label} prepare",
        )
    return [table, rss]


def main(argv: list[str] | None = None) -> int:
    """Measure and print; ``--json PATH`` also writes the figures."""
    parser = add_report_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--quick", action="store_true", help="1k-rule bundles instead of 10k")
    parser.add_argument("--before", metavar="TREE", help="also run the manager process on the library in TREE")
    args = parser.parse_args(argv)
    reports = run(quick=args.quick, tree=args.before)
    for report in reports[:-1]:
        report.print()
    return reports[-1].finish(args)


if __name__ == "__main__":
    sys.exit(main())
