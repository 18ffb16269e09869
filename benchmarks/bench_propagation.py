"""Issue 12: from a commit to N evaluator processes SERVING the new version, push follower vs polling follower.

Starts a throwaway PostgreSQL cluster (as the test suite does; ``--conninfo`` uses an existing server
instead). For each fleet size (``--processes 8,32``) and each mode it starts that many evaluator
processes, each a ``DeploymentManager`` following the store:

- ``push``: ``DeploymentManager.open(url)``'s own follower, a ``PushLoop`` waiting on LISTEN/NOTIFY
  (polling the revision every second as the safety net);
- ``poll``: the polling follower (``BackgroundLoop``) every ``--poll-ms`` (20 ms, the default).

One writer then deploys ``--rounds`` versions (alternately the example gateway bundles v1 and v2):
``prepare`` (staged), a pause of 100-200 ms, then ``activate``. Propagation runs from just before
``activate_deployment`` is called (its commit included) to the moment an evaluator process has
published the new serving snapshot, its table compiled (measured in the process's ``after_swap``
hook, which runs right after the snapshot is swapped in), on the system-wide monotonic clock
(comparable across processes on Linux), over every (version, process) pair. Printed: p50 / p99 / max
per fleet size and mode, and the ratio push/poll measured in the same run. For the push follower it
also prints when each process *received* the notification (commit -> notified, notified -> serving),
and the whole machine's CPU in the 100 ms after each activation (``/proc/stat``: every process, the
server and the kernel), which is what bounds the figure on a small machine.

``--back-to-back`` deploys as ``rule-engine deploy`` does, the activation right after the prepare,
and measures from the prepare's commit: the follower's read and compile of the new table are then
inside the figure (with the pause, a follower compiles the staged version before the activation).

    .venv/bin/python benchmarks/bench_propagation.py [--processes 8,32] [--rounds 30] [--poll-ms 20]
                                                     [--back-to-back] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")
sys.path.insert(0, str(ROOT / "benchmarks"))
WORKER_LIFETIME = 300.0  # an evaluator process gives up after this long whatever happens


from bench_postgres import percentile, spawn_ready, start_server  # noqa: E402


def _evaluator(url: str, mode: str, poll_s: float, expected: int) -> None:
    """One evaluator process: follow, note when each new stable version starts serving, print them."""
    import logging

    import structlog

    from rule_engine import DeploymentManager
    from rule_engine.deployment.background import BackgroundLoop

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    served: list[tuple[str, int]] = []
    notified: list[tuple[int, int]] = []  # (revision, when the listener returned it)
    if mode == "push":
        from rule_engine.stores._pg_listen import PostgresListener

        wait = PostgresListener.wait_for_change

        def timed_wait(self: Any, timeout: float, **kwargs: Any) -> int | None:
            revision = wait(self, timeout, **kwargs)
            if revision is not None:
                notified.append((revision, time.monotonic_ns()))
            return revision

        PostgresListener.wait_for_change = timed_wait  # type: ignore[method-assign]
    done = threading.Event()
    manager = DeploymentManager.open(url, follow=False)

    def swapped(event: Any) -> None:
        stable = event.serving_after[0]
        if stable is not None and stable != event.serving_before[0]:
            served.append((stable, time.monotonic_ns()))
            if len(served) >= expected:
                done.set()

    manager.subscribe("after_swap", swapped)
    if mode == "push":
        manager.start_following()
    else:
        step = manager._follower.step_with_flush(manager._health, manager._clock, 1.0)
        manager._start(BackgroundLoop("rule-engine-follower", poll_s, step))
    print("ready", flush=True)
    cpu = _own_cpu()
    done.wait(WORKER_LIFETIME)
    cpu = _own_cpu() - cpu
    manager.close()
    for version_id, at in served:
        print(f"{version_id} {at}")
    for revision, at in notified:
        print(f"revision-{revision} {at}")
    print(f"cpu {cpu:.6f}")


def _own_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(cluster: Any) -> float | None:
    """CPU seconds the cluster used so far: the postmaster, its live children and the ones it reaped."""
    if cluster is None:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    pids = cluster.pids()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:13])  # utime, stime
        if pid == pids[0]:
            total += sum(int(f) for f in fields[13:15])  # cutime, cstime: exited backends
    return total / tick


def _machine_busy_ms() -> float:
    """CPU milliseconds the whole machine spent busy so far (every CPU, all processes and the kernel)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) * 1000 / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _run(
    url: str, mode: str, processes: int, rounds: int, poll_s: float, cluster: Any = None, back_to_back: bool = False
) -> dict[str, Any]:
    from rule_engine import DeploymentManager

    server_before = _server_cpu(cluster)
    procs = spawn_ready(["--as-evaluator", url, mode, str(poll_s), str(rounds)], processes, __file__)
    time.sleep(0.5)
    started: dict[str, int] = {}
    revisions: dict[str, int] = {}
    storms: list[float] = []
    rng = random.Random(12)
    with DeploymentManager.open(url, follow=False) as writer:
        for i in range(rounds):
            if back_to_back:
                started[f"{i}"] = time.monotonic_ns()  # renamed to the version id below
            version_id = writer.prepare_deployment(BUNDLES[i % 2])
            if back_to_back:
                started[version_id] = started.pop(f"{i}")
            else:
                time.sleep(rng.uniform(0.1, 0.2))
                started[version_id] = time.monotonic_ns()
            busy = _machine_busy_ms()
            writer.activate_deployment(version_id)
            revisions[version_id] = writer.snapshot.revision
            time.sleep(0.1)  # the activation's pickups, before the next prepare
            storms.append(_machine_busy_ms() - busy)
    latencies: list[float] = []
    to_notified: list[float] = []
    to_serving: list[float] = []
    missing = 0
    client_cpu = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=WORKER_LIFETIME + 30)
        got = dict(line.split() for line in out.splitlines() if line.strip())
        client_cpu += float(got.pop("cpu", "nan"))
        for version_id, t0 in started.items():
            if version_id in got:
                latencies.append((int(got[version_id]) - t0) / 1e6)
                note = got.get(f"revision-{revisions[version_id]}")
                if note is not None and not back_to_back:
                    to_notified.append((int(note) - t0) / 1e6)
                    to_serving.append((int(got[version_id]) - int(note)) / 1e6)
            else:
                missing += 1
    return {
        "machine_cpu_per_activation_ms": percentile(storms, 0.5),
        "commit_to_notified_ms": [percentile(to_notified, q) for q in (0.5, 0.9, 0.99)] if to_notified else None,
        "notified_to_serving_ms": [percentile(to_serving, q) for q in (0.5, 0.9, 0.99)] if to_serving else None,
        "mode": mode,
        "processes": processes,
        "rounds": rounds,
        "samples": len(latencies),
        "missing": missing,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        # CPU per (version, process) pair, both commits (prepare, activate) and idle polling included
        "evaluator_cpu_ms": client_cpu / (processes * rounds) * 1e3,
        "server_cpu_ms": (server_after - server_before) / (processes * rounds) * 1e3
        if server_before is not None and (server_after := _server_cpu(cluster)) is not None
        else None,
    }


def _url(conninfo: str) -> str:
    from urllib.parse import urlencode

    from psycopg.conninfo import conninfo_to_dict

    parts = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    return f"postgresql:///{parts.pop('dbname')}?{urlencode(parts)}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-evaluator":
        _evaluator(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="8,32", help="fleet sizes, comma-separated (each 1..64)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--poll-ms", type=float, default=20.0)
    parser.add_argument("--conninfo", help="an existing server (a database this may write to)")
    parser.add_argument("--back-to-back", action="store_true", help="activate right after the prepare; from its commit")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    sizes = [int(n) for n in args.processes.split(",")]
    if not all(1 <= n <= 64 for n in sizes) or not 1 <= args.rounds <= 1000:
        parser.error("--processes must each be 1..64 and --rounds 1..1000")
    server = start_server(args.conninfo, "rule-engine-bench-prop-")
    if server is None:
        return 2
    cluster, conninfo = server
    url = _url(conninfo)
    results = []
    load = os.getloadavg()
    try:
        for size in sizes:
            for mode in ("push", "poll"):
                results.append(_run(url, mode, size, args.rounds, args.poll_ms / 1000, cluster, args.back_to_back))
    finally:
        if cluster is not None:
            cluster.destroy()
    start = "commit (prepare, the activation right after it)" if args.back_to_back else "commit (activate)"
    print(f"{start} -> N evaluator processes serving the new version, {args.rounds} versions each")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"{'processes':>9} {'follower':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'samples':>8} {'missing':>8}"
        f" {'cpu/pickup ms: evaluator':>25} {'server':>7}"
    )
    for r in results:
        name = "push (LISTEN/NOTIFY)" if r["mode"] == "push" else f"poll every {args.poll_ms:g} ms"
        server = f"{r['server_cpu_ms']:7.2f}" if r["server_cpu_ms"] is not None else f"{'-':>7}"
        print(
            f"{r['processes']:>9} {name:<22} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}"
            f" {r['samples']:8d} {r['missing']:8d} {r['evaluator_cpu_ms']:25.2f} {server}"
        )
    for r in results:
        detail = f"{r['processes']:>9} {r['mode']:<5} machine CPU busy in the 100 ms after an activation: {r['machine_cpu_per_activation_ms']:.0f} ms (p50)"
        if r["commit_to_notified_ms"] is not None:
            notified, serving = r["commit_to_notified_ms"], r["notified_to_serving_ms"]
            detail += (
                f"; commit -> notified p50/p90/p99 {notified[0]:.1f}/{notified[1]:.1f}/{notified[2]:.1f} ms,"
                f" notified -> serving {serving[0]:.1f}/{serving[1]:.1f}/{serving[2]:.1f} ms"
            )
        print(detail)
    end = os.getloadavg()
    print(f"load average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    for size in sizes:
        push, poll = (next(r for r in results if r["processes"] == size and r["mode"] == m) for m in ("push", "poll"))
        print(
            f"{size} processes: push/poll p50 {push['p50_ms'] / poll['p50_ms']:.2f}x, "
            f"p99 {push['p99_ms'] / poll['p99_ms']:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
