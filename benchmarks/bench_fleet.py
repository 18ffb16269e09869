"""Fleet figures: how soon ``status`` knows the whole fleet converged, and the mirror hop.

    .venv/bin/python benchmarks/bench_fleet.py [--instances 8 32] [--commits 40] [--postgres | --store URL]
                                               [--mirror-commits 30] [--json PATH]

1. **Fleet convergence seen by status.** ``--instances`` follower processes follow one store and
   register in the fleet. The benchmark process activates versions alternately (blue-green; the
   example gateway bundles v1 and v2, so each follower loads and compiles the new table)
   ``--commits`` times and, after each commit returns, reads the fleet view (``rule-engine
   status``'s ``fleet``: one query of the instance rows, compared with the state) every 1 ms until it
   says all N serve it. Reported: commit -> status knows all N instances serve it (p50/p99/max), and
   the cost of one fleet read at N rows. Reading every millisecond is itself load (a read costs 1-2 ms
   of the machine during the fleet's pickups), so the figure is also given without the reader: each
   follower notes when its heartbeat naming the new version returned (its row committed), and commit
   -> the last of the N rows committed is when a ``status`` would first see the fleet converged.
   ``--read-every-ms`` sets the reader's interval (1 ms by default).
   - default: a temporary SQLite file, followers polling it every 20 ms (``DeploymentManager.open``);
   - ``--postgres``: a throwaway PostgreSQL cluster (as the test suite starts; ``--conninfo`` for an
     existing server), each size twice in the same run: ``push`` followers (``DeploymentManager.open``:
     LISTEN/NOTIFY, 1 s safety poll) and ``poll`` followers (the polling loop every 20 ms).
2. **Mirror hop.** An upstream store, a :class:`Mirror` copying it into a local SQLite file (its
   ``run`` loop in this process, forwarding every 5 ms), and one evaluator *process* following the
   local file (20 ms poll; ``bench_propagation.py``'s evaluator): upstream commit (``activate_deployment`` called) -> that process has
   swapped the new version in (its ``after_swap`` hook, on the system-wide monotonic clock),
   p50/p99/max over ``--mirror-commits``. With ``--postgres`` the upstream is the cluster and the
   mirror runs twice: followed by push (LISTEN/NOTIFY) and by polling every 5 ms (the same mirror
   with ``listen`` hidden); otherwise an SQLite upstream, polled.

Wall-clock figures on whatever machine runs it; nothing is asserted; the load average is printed.
Goal (issue 12): status knows the fleet converged with p99 < 30 ms at 32 instances.
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
for extra in (ROOT, ROOT / "tests", HERE):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import structlog  # noqa: E402

from rule_engine import DeploymentManager  # noqa: E402
from rule_engine.deployment.mirror import Mirror  # noqa: E402
from rule_engine.stores.base import StateStore, open_store  # noqa: E402
from rule_engine.stores.sqlite import SQLiteStore  # noqa: E402

BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")
WAIT = 30.0  # bound on every wait
POLL_S = 0.02  # the polling follower's interval


def _quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


def worker(url: str, mode: str, seconds: float) -> None:
    """A follower process: follow the store (and beat) until stdin closes or ``seconds`` pass."""
    from rule_engine.deployment.background import BackgroundLoop

    _quiet()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    manager = DeploymentManager.open(url, follow=False)
    reported: list[tuple[str | None, int]] = []  # (the stable version a heartbeat named, when it returned)
    store: Any = manager.store
    heartbeat = store.heartbeat

    def noted(info: Any) -> None:
        heartbeat(info)
        reported.append((info.stable, time.monotonic_ns()))

    store.heartbeat = noted
    if mode != "poll":
        manager.start_following()
    if mode == "poll":  # the polling loop on any store, the fleet heartbeat included
        follower = manager._follower
        step = manager.fleet.beating(follower.step_with_flush(manager._health, manager._clock, 1.0))
        manager._start(BackgroundLoop("rule-engine-follower", POLL_S, step))
    with manager:
        print("ready", flush=True)
        stop.wait(seconds)
    for stable, at in reported:
        print(f"{stable} {at}")
    sys.stdout.flush()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": _pct(values, 0.5) * 1e3, "p99_ms": _pct(values, 0.99) * 1e3, "max_ms": max(values) * 1e3}


def _bundle(i: int, major: int) -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(BUNDLES[i % 2].read_text())
    bundle["version"] = f"{major}.{i}.0"
    return bundle


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def bench_convergence(url: str, instances: int, commits: int, mode: str, read_every: float = 0.001) -> dict[str, Any]:
    """Commit -> the fleet view says all ``instances`` serve it (one row per follower process)."""
    manager = DeploymentManager.open(url, follow=False)
    manager.activate_deployment(manager.prepare_deployment(_bundle(0, 7)))
    procs = [_spawn(["worker", url, mode, str(WAIT * 8)]) for _ in range(instances)]
    latencies: list[float] = []
    reads: list[float] = []
    committed_at: dict[str, int] = {}
    outputs: list[str] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()
        _wait(lambda: len(manager.fleet.view().instances) == instances and manager.fleet.view().converged)
        for i in range(commits):
            version_id = manager.prepare_deployment(_bundle(i, 8 + instances))
            time.sleep(0.1)  # the prepare's own pickup is not what is measured
            manager.activate_deployment(version_id)
            committed = time.perf_counter()
            committed_at[version_id] = time.monotonic_ns()
            while time.perf_counter() - committed < WAIT:
                started = time.perf_counter()
                view = manager.fleet.view()
                reads.append(time.perf_counter() - started)
                if view.converged and len(view.instances) == instances:
                    latencies.append(time.perf_counter() - committed)
                    break
                time.sleep(read_every)
            time.sleep(0.1)  # the last reports, before the next prepare
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in procs:
            out = proc.stdout.read() if proc.stdout is not None else ""
            outputs.append(out)
            proc.wait(timeout=WAIT)
            if proc.stdout is not None:
                proc.stdout.close()
        manager.close()
    last_reports: list[float] = []
    for version_id, at in committed_at.items():
        firsts = [_first_report(out, version_id) for out in outputs]
        if all(t is not None for t in firsts):
            last_reports.append((max(t for t in firsts if t is not None) - at) / 1e9)
    return {
        "instances": instances,
        "mode": mode,
        "commits": len(latencies),
        "converged": _summary(latencies),
        "read": _summary(reads),
        "last_report": _summary(last_reports) if last_reports else None,
    }


def _first_report(out: str, version_id: str) -> int | None:
    """When a worker's first heartbeat naming ``version_id`` as its stable version returned (None: never)."""
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == version_id:
            return int(parts[1])
    return None


def _wait(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the fleet did not converge in time")
        time.sleep(0.005)


class _Polled:
    """An upstream store seen without ``listen()``: the mirror then polls it (the same-run baseline)."""

    listen = None

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def bench_mirror(upstream_url: str, workdir: Path, commits: int, mode: str) -> dict[str, Any]:
    """Upstream commit -> a process following the mirror file has swapped the new version in."""
    local_url = f"sqlite:///{workdir / f'mirror-{mode}.db'}"
    upstream = DeploymentManager.open(upstream_url, follow=False)
    upstream.activate_deployment(upstream.prepare_deployment(_bundle(0, 50)))
    source = open_store(upstream_url)
    marks = [0]
    real_mark = source.mark

    def counted_mark() -> Any:
        marks[0] += 1
        return real_mark()

    source.mark = counted_mark  # type: ignore[method-assign]
    copy = Mirror(source if mode == "push" else _Polled(source), SQLiteStore.from_url(local_url, create=True))  # type: ignore[arg-type]
    copy.open()
    copy.sync_once()
    thread = threading.Thread(target=copy.run, args=(0.005, None), daemon=True)
    thread.start()
    proc = subprocess.Popen(  # bench_propagation's evaluator process: prints when each version swaps in
        [sys.executable, str(HERE / "bench_propagation.py"), "--as-evaluator", local_url, "push", "0.02", str(commits)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    started: dict[str, int] = {}
    copied: dict[int, int] = {}  # upstream revision -> when the mirror file held it (monotonic ns)
    real_copy = copy._copy

    def timed_copy() -> None:
        real_copy()
        copied[copy.local.revision()] = time.monotonic_ns()

    copy._copy = timed_copy  # type: ignore[method-assign]
    revisions: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.3)
        began, marks_before = time.monotonic(), marks[0]
        for i in range(commits):
            version_id = upstream.prepare_deployment(_bundle(i, 60))
            time.sleep(0.15)
            started[version_id] = time.monotonic_ns()
            upstream.activate_deployment(version_id)
            revisions[version_id] = upstream.state.revision
            time.sleep(0.15)
        mark_rate = (marks[0] - marks_before) / (time.monotonic() - began)
        out, _ = proc.communicate(timeout=WAIT * 5)
    finally:
        copy.stop()
        thread.join(WAIT)
        if proc.poll() is None:
            proc.kill()
        upstream.close()
        source.close()
        copy.local.close()
    got = dict(line.split() for line in out.splitlines() if line.strip())
    got.pop("cpu", None)
    hops = [(int(got[v]) - t0) / 1e9 for v, t0 in started.items() if v in got]
    to_file = [(copied[revisions[v]] - t0) / 1e9 for v, t0 in started.items() if revisions[v] in copied]
    return {
        "mode": mode,
        "commits": commits,
        "missing": commits - len(hops),
        "hop": _summary(hops),
        "to_mirror_file": _summary(to_file),
        "upstream_marks_per_s": mark_rate,
    }


def _postgres(conninfo: str | None) -> tuple[Any, str]:
    from bench_postgres import start_server
    from bench_propagation import _url

    server = start_server(conninfo, "rule-engine-bench-fleet-")
    if server is None:
        raise SystemExit(2)
    cluster, info = server
    return cluster, _url(info)


def _fresh_database(cluster: Any, base_url: str) -> str:
    """A new empty database on the throwaway cluster (each measurement starts from an empty store)."""
    if cluster is None:
        return base_url
    from _support_postgres import PgServer
    from bench_propagation import _url

    return str(_url(PgServer(cluster.conninfo(), cluster).create_database()))


def main() -> int:
    """Run both benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--commits", type=int, default=40)
    parser.add_argument("--mirror-commits", type=int, default=30)
    parser.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL cluster")
    parser.add_argument("--conninfo", help="with --postgres: an existing server instead (a database it may write)")
    parser.add_argument("--store", help="a store URL for the convergence figure (default: a temporary SQLite file)")
    parser.add_argument("--read-every-ms", type=float, default=1.0, help="the status reader's interval")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if not all(1 <= n <= 64 for n in args.instances):
        parser.error("--instances must each be 1..64")
    if not 0.0 <= args.read_every_ms <= 1000.0:
        parser.error("--read-every-ms must be 0..1000")
    _quiet()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    figures: dict[str, Any] = {"machine": f"{os.cpu_count()} cpus", "load": load, "convergence": [], "mirror": []}
    cluster, pg_url = _postgres(args.conninfo) if args.postgres else (None, "")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            modes = ("push", "poll") if args.postgres else ("poll",)
            for n in args.instances:
                for mode in modes:
                    if args.postgres:
                        url = _fresh_database(cluster, pg_url)
                    else:
                        url = args.store or f"sqlite:///{Path(tmp) / f'fleet-{n}.db'}"
                    row = bench_convergence(url, n, args.commits, mode, args.read_every_ms / 1000)
                    figures["convergence"].append(row)
                    c, r, last = row["converged"], row["read"], row["last_report"]
                    print(
                        f"status knows {n:>3} {mode} instances converged: p50 {c['p50_ms']:6.1f} ms  p99 "
                        f"{c['p99_ms']:6.1f} ms  max {c['max_ms']:6.1f} ms   (one fleet read: p50 {r['p50_ms']:.2f} ms, "
                        f"p99 {r['p99_ms']:.2f} ms, every {args.read_every_ms:g} ms)",
                        flush=True,
                    )
                    if last is not None:
                        print(
                            f"  the last of the {n} rows committed (no reader needed): p50 {last['p50_ms']:6.1f} ms"
                            f"  p99 {last['p99_ms']:6.1f} ms  max {last['max_ms']:6.1f} ms",
                            flush=True,
                        )
            for mode in ("push", "poll") if args.postgres else ("poll",):
                upstream = (
                    _fresh_database(cluster, pg_url) if args.postgres else f"sqlite:///{Path(tmp) / 'upstream.db'}"
                )
                row = bench_mirror(upstream, Path(tmp), args.mirror_commits, mode)
                figures["mirror"].append(row)
                h, f = row["hop"], row["to_mirror_file"]
                print(
                    f"mirror hop, mirror {mode} (upstream commit -> process behind the mirror serves it): "
                    f"p50 {h['p50_ms']:.1f} ms  p99 {h['p99_ms']:.1f} ms  max {h['max_ms']:.1f} ms"
                    f"  ({row['missing']} missing); commit -> mirror file holds it: p50 {f['p50_ms']:.1f} ms"
                    f"  p99 {f['p99_ms']:.1f} ms; upstream mark() calls: {row['upstream_marks_per_s']:.0f}/s",
                    flush=True,
                )
    finally:
        if cluster is not None:
            cluster.destroy()
    end = os.getloadavg()
    print(f"load average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
