"""Fleet figures: how soon ``status`` knows the whole fleet converged, and the mirror hop.

    .venv/bin/python benchmarks/bench_fleet.py [--instances 8 32] [--commits 40] [--store URL] [--json PATH]

1. **Fleet convergence seen by status.** ``--instances`` follower processes (``DeploymentManager.open``,
   default 20 ms poll, fleet heartbeat on change) follow one store (a temporary SQLite file, or
   ``--store``). The benchmark process activates versions alternately (blue-green) ``--commits`` times
   and, after each commit returns, reads the fleet view (``rule-engine status``'s ``fleet``: one query
   of the instance rows, compared with the state) every 1 ms until it says converged. Reported: commit
   -> status knows all N instances serve it (p50/p99/max), and the cost of one fleet read at N rows.
2. **Mirror hop.** An upstream SQLite file, a :class:`Mirror` syncing it into a local SQLite file every
   5 ms, and a manager following the local file (20 ms poll): upstream commit -> that manager serves
   the new version (p50/p99/max over ``--commits``).

Wall-clock figures on whatever machine runs it; nothing is asserted. Goal (issue 12): status knows the
fleet converged with p99 < 30 ms at 32 instances.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from rule_engine import DeploymentManager  # noqa: E402
from rule_engine.deployment.mirror import Mirror  # noqa: E402
from rule_engine.stores.base import open_store  # noqa: E402
from rule_engine.stores.sqlite import SQLiteStore  # noqa: E402

BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")
WAIT = 30.0  # bound on every wait


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


def worker(url: str, seconds: float) -> None:
    """A follower process: follow the store (and beat) until stdin closes or ``seconds`` pass."""
    _quiet()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with DeploymentManager.open(url):
        print("ready", flush=True)
        stop.wait(seconds)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _pct(values, 0.5) * 1e3, "p99_ms": _pct(values, 0.99) * 1e3, "max_ms": max(values) * 1e3}


def bench_convergence(url: str, instances: int, commits: int) -> dict[str, Any]:
    """Commit -> the fleet view says all ``instances`` serve it (one row per follower process)."""
    manager = DeploymentManager.open(url, follow=False)
    manager.activate_deployment(manager.prepare_deployment(str(BUNDLES[0])))
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "worker", url, str(WAIT * 4)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(instances)
    ]
    latencies: list[float] = []
    reads: list[float] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        _wait(lambda: len(manager.fleet.view().instances) == instances and manager.fleet.view().converged)
        for i in range(commits):
            bundle = json.loads(BUNDLES[i % 2].read_text())
            bundle["version"] = f"8.{i}.0"
            manager.activate_deployment(manager.prepare_deployment(bundle))
            committed = time.perf_counter()
            while time.perf_counter() - committed < WAIT:
                started = time.perf_counter()
                view = manager.fleet.view()
                reads.append(time.perf_counter() - started)
                if view.converged and len(view.instances) == instances:
                    latencies.append(time.perf_counter() - committed)
                    break
                time.sleep(0.001)
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            proc.wait(timeout=WAIT)
            if proc.stdout is not None:
                proc.stdout.close()
        manager.close()
    return {
        "instances": instances,
        "commits": len(latencies),
        "converged": _summary(latencies),
        "read": _summary(reads),
    }


def _wait(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet did not converge in time")
        time.sleep(0.005)


def bench_mirror(workdir: Path, commits: int) -> dict[str, Any]:
    """Upstream commit -> a manager following the mirror serves it."""
    upstream_url = f"sqlite:///{workdir / 'upstream.db'}"
    local_url = f"sqlite:///{workdir / 'mirror.db'}"
    upstream = DeploymentManager.open(upstream_url, follow=False)
    v1 = upstream.prepare_deployment(str(BUNDLES[0]))
    upstream.activate_deployment(v1)
    copy = Mirror(open_store(upstream_url), SQLiteStore.from_url(local_url, create=True))
    copy.open()
    copy.sync_once()
    thread = threading.Thread(target=copy.run, args=(0.005, None), daemon=True)
    thread.start()
    local = DeploymentManager.open(local_url)
    hops: list[float] = []
    try:
        for i in range(commits):
            bundle = json.loads(BUNDLES[i % 2].read_text())
            bundle["version"] = f"9.{i}.0"
            version_id = upstream.prepare_deployment(bundle)
            started = time.perf_counter()
            upstream.activate_deployment(version_id)
            while local.get_active_version_id() != version_id and time.perf_counter() - started < WAIT:
                time.sleep(0.0005)
            hops.append(time.perf_counter() - started)
    finally:
        copy.stop()
        thread.join(WAIT)
        local.close()
        upstream.close()
        copy.upstream.close()
        copy.local.close()
    return {"commits": commits, "hop": _summary(hops)}


def main() -> int:
    """Run both benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--store", help="a store URL for the convergence figure (default: a temporary SQLite file)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    _quiet()
    figures: dict[str, Any] = {"machine": f"{os.cpu_count()} cpus", "convergence": [], "mirror": None}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        for n in args.instances:
            url = args.store or f"sqlite:///{Path(tmp) / f'fleet-{n}.db'}"
            row = bench_convergence(url, n, args.commits)
            figures["convergence"].append(row)
            c, r = row["converged"], row["read"]
            print(
                f"status knows {n:>3} instances converged: p50 {c['p50_ms']:6.1f} ms  p99 {c['p99_ms']:6.1f} ms  "
                f"max {c['max_ms']:6.1f} ms   (one fleet read: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms)"
            )
        figures["mirror"] = bench_mirror(Path(tmp), args.commits)
        h = figures["mirror"]["hop"]
        print(
            f"mirror hop (upstream commit -> process behind the mirror serves it): p50 {h['p50_ms']:.1f} ms  "
            f"p99 {h['p99_ms']:.1f} ms  max {h['max_ms']:.1f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], float(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
