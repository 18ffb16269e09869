"""Follower pickup latency: how long after an activation commits in one process a follower serves it.

    .venv/bin/python benchmarks/bench_follower.py [--quick] [--changes 50] [--json PATH]

One process prepares and activates ``--changes`` versions on a SQLite store (each activation after a
random 0-20 ms pause, so the commits land at random phases of the follower's poll); a second process,
``DeploymentManager.open(url)`` with the default poll interval (20 ms), checks
``get_active_version_id()`` every 0.5 ms and reports the wall time at which each new version first
serves (the ``watch`` role of ``tests/_support_processes.py``, as in the unit suite). Two clocks: from the activation call having returned (the commit is durable) to the follower
serving it, and from the activation call starting (so including the commit and its fsync). Both
processes run on the same machine, so ``time.time()`` is shared. Figures are printed as p50 / p95 /
max and as ratios against the poll interval (baseline ``poll``); there is no goal. Moved here from
the unit suite, which checks only that a follower sees every activation.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import structlog  # noqa: E402
from _timing import Report, add_report_args  # noqa: E402

from rule_engine import DeploymentManager  # noqa: E402

BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")
WATCHER = ROOT / "tests" / "_support_processes.py"  # its "watch" role is the follower process
POLL_SECS = 0.02  # DeploymentManager.open's default poll_interval
WAIT = 30.0  # bound on any wait for the follower


def _line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the follower ended early: {proc.stderr.read() if proc.stderr else ''}")
    result: dict[str, Any] = json.loads(line)
    return result


def measure_pickup(changes: int, seed: int = 5) -> tuple[list[float], list[float]]:
    """Seconds from commit returned, and from activation started, to the follower serving, per change."""
    after_commit: list[float] = []
    with_commit: list[float] = []
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'state.db'}"
        with DeploymentManager.open(url, follow=False) as manager:
            watcher = subprocess.Popen(
                [sys.executable, str(WATCHER), "watch", url, str(WAIT + changes * 0.1)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            try:
                if not _line(watcher).get("ready"):
                    raise RuntimeError("the follower did not start")
                for i in range(changes):
                    version_id = manager.prepare_deployment(BUNDLES[i % 2], deployed_by="bench")
                    time.sleep(rng.uniform(0, 0.02))  # a random phase against the follower's poll
                    started = time.time()
                    manager.activate_deployment(version_id)
                    committed = time.time()
                    seen = _line(watcher)
                    if seen.get("active") != version_id:
                        raise RuntimeError(f"the follower saw {seen}, expected {version_id}")
                    after_commit.append(max(0.0, seen["at"] - committed))
                    with_commit.append(seen["at"] - started)
            finally:
                watcher.kill()
                watcher.communicate(timeout=WAIT)
    return after_commit, with_commit


def _pct(ordered: list[float], q: float) -> float:
    return ordered[max(0, int(q * len(ordered)) - 1)]


def run(*, changes: int) -> Report:
    """The pickup figures in a Report (ns, ratios against the poll interval)."""
    after_commit, with_commit = measure_pickup(changes)
    report = Report(title=f"follower pickup latency, {changes} changes (default {POLL_SECS * 1000:g} ms poll)")
    report.baseline("poll", POLL_SECS * 1e9)
    for label, values in (("after commit", after_commit), ("incl. commit", with_commit)):
        ordered = sorted(values)
        for stat, value in (
            ("p50", statistics.median(ordered)),
            ("p95", _pct(ordered, 0.95)),
            ("max", ordered[-1]),
        ):
            report.add(f"{label} {stat}", value * 1e9, baseline="poll", note=f"{value * 1000:.1f} ms")
    return report


def main(argv: list[str] | None = None) -> int:
    """Measure and print; ``--json PATH`` also writes the figures."""
    parser = add_report_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--quick", action="store_true", help="10 changes instead of --changes")
    parser.add_argument("--changes", type=int, default=50, help="activations to time (default 50)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))  # stdout is data
    return run(changes=10 if args.quick else max(1, args.changes)).finish(args)


if __name__ == "__main__":
    sys.exit(main())
