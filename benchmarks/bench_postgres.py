"""Issue 12: how fast a commit on PostgreSQL reaches follower processes, LISTEN/NOTIFY vs polling.

Starts a throwaway PostgreSQL cluster (as the test suite does; ``--conninfo`` uses an existing server
instead), then for each mode runs N listener processes and one writer that commits ``--commits``
times at random intervals of 30-70 ms:

- ``listen``: each process waits in ``PostgresListener.wait_for_change`` (LISTEN/NOTIFY);
- ``poll``: each process reads ``PostgresStore.revision()`` every ``--poll-ms`` (20 ms, the
  follower's default poll interval), the safety net without notifications.

Propagation is from just before ``commit()`` is called to the moment a listener process has the new
revision, on the system-wide monotonic clock (comparable across processes on Linux), over every
(commit, listener) pair. Printed: p50/p99/max per mode, the ratio listen/poll measured in the same
run, and the commit time itself.

With ``--faults`` (own cluster only) it then crashes the server under the listeners (``pg_ctl stop
-m immediate``), restarts it and hangs it (SIGSTOP), and prints when each listener went stale and
came back, and how long a writer takes to fail and to commit again.

    .venv/bin/python benchmarks/bench_postgres.py [--listeners 8] [--commits 100] [--poll-ms 20] [--faults] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _listener(conninfo: str, mode: str, last: int, poll_s: float) -> None:
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(conninfo, timeout=5.0)
    seen = store.revision()
    deadline = time.monotonic() + 120
    out = sys.stdout
    if mode == "listen":
        with store.listen() as listener:
            listener.wait_for_change(1.0)
            print("ready", flush=True)
            while seen < last and time.monotonic() < deadline:
                revision = listener.wait_for_change(1.0)
                if revision is not None and revision > seen:
                    out.write(f"{revision} {time.monotonic_ns()}\n")
                    seen = revision
    else:
        print("ready", flush=True)
        while seen < last and time.monotonic() < deadline:
            time.sleep(poll_s)
            revision = store.revision()
            if revision > seen:
                out.write(f"{revision} {time.monotonic_ns()}\n")
                seen = revision
    out.flush()
    store.close()


def _fault_listener(conninfo: str, duration: float) -> None:
    """A follower loop: print when it goes stale and when it is back, on the shared monotonic clock."""
    from rule_engine.errors import StoreError
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(conninfo, timeout=1.0)
    stale = False
    deadline = time.monotonic() + duration
    with store.listen() as listener:
        listener.wait_for_change(1.0)
        print("ready", flush=True)
        while time.monotonic() < deadline:
            try:
                revision = listener.wait_for_change(0.5)
            except StoreError:
                if not stale:
                    print(f"stale {time.monotonic_ns()}", flush=True)
                    stale = True
                time.sleep(0.01)  # a short fixed backoff: this measures catch-up, not backoff policy
                continue
            if stale:
                print(f"back {time.monotonic_ns()} {listener.revision}", flush=True)
                stale = False
            del revision
    store.close()


def _run_faults(cluster: Any, listeners: int) -> dict[str, Any]:
    """Crash detection and catch-up for N listener processes; writer failure times when stopped/hung."""
    from rule_engine.errors import StoreError
    from rule_engine.stores.postgres import PostgresStore

    conninfo = cluster.conninfo()
    procs = spawn_ready(["--as-fault-listener", conninfo, "60"], listeners)
    writer = PostgresStore(conninfo, timeout=1.0)
    state = writer.commit(writer.revision(), writer.load())
    time.sleep(0.3)
    t_stop = time.monotonic_ns()
    cluster.stop("immediate")
    t0 = time.monotonic()
    try:
        writer.commit(state.revision, state)
    except StoreError:
        stopped_fail_s = time.monotonic() - t0
    time.sleep(0.5)
    t_start_begin = time.monotonic_ns()
    cluster.start()
    t_started = time.monotonic_ns()
    t0 = time.monotonic()
    state = writer.commit(state.revision, state)
    first_commit_s = time.monotonic() - t0
    time.sleep(1.5)
    frozen = cluster.hang()
    t0 = time.monotonic()
    try:
        writer.commit(state.revision, state)
    except StoreError:
        hung_fail_s = time.monotonic() - t0
    cluster.resume(frozen)
    writer.close()
    for proc in procs:
        proc.terminate()
    detect_ms: list[float] = []
    back_ms: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=30)
        events = [line.split() for line in out.splitlines()]
        stale = [int(e[1]) for e in events if e[0] == "stale"]
        back = [int(e[1]) for e in events if e[0] == "back"]
        if stale:
            detect_ms.append((stale[0] - t_stop) / 1e6)
        if back:
            back_ms.append((back[0] - t_start_begin) / 1e6)
    return {
        "listeners": listeners,
        "detected": len(detect_ms),
        "caught_up": len(back_ms),
        "detect_max_ms": max(detect_ms) if detect_ms else None,
        "detect_p50_ms": percentile(detect_ms, 0.5) if detect_ms else None,
        "catch_up_max_ms": max(back_ms) if back_ms else None,
        "catch_up_p50_ms": percentile(back_ms, 0.5) if back_ms else None,
        "pg_ctl_start_ms": (t_started - t_start_begin) / 1e6,
        "writer_stopped_fail_s": stopped_fail_s,
        "writer_first_commit_after_restart_s": first_commit_s,
        "writer_hung_fail_s": hung_fail_s,
    }


def spawn_ready(args: list[str], count: int, script: str = __file__) -> list[subprocess.Popen[str]]:
    """Start ``count`` worker processes running ``script`` with ``args``; return once each printed ``ready``.

    If one does not start, all are killed and RuntimeError says what it printed.
    """
    procs = [
        subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # bounded: a worker gives up after its duration
        if line != "ready":
            for other in procs:
                other.kill()
            raise RuntimeError(f"a worker did not start: {line!r}")
    return procs


def start_server(conninfo: str | None, prefix: str) -> tuple[Any, str] | None:
    """``(None, conninfo)`` for a given server, else ``(cluster, its conninfo)`` of a throwaway one.

    None (after saying why on stderr) when there are no PostgreSQL binaries to start one.
    """
    if conninfo is not None:
        return None, conninfo
    from _support_postgres import PgCluster, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        print("UNAVAILABLE: no PostgreSQL binaries (initdb, pg_ctl); pass --conninfo", file=sys.stderr)
        return None
    cluster = PgCluster(bindir, prefix=prefix)
    return cluster, cluster.conninfo()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _run_mode(conninfo: str, mode: str, listeners: int, commits: int, poll_s: float) -> dict[str, Any]:
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(conninfo, timeout=5.0)
    state = store.load()
    first = state.revision
    last = first + commits
    procs = spawn_ready(["--as-listener", conninfo, mode, str(last), str(poll_s)], listeners)
    time.sleep(0.2)
    started: dict[int, int] = {}
    commit_ms: list[float] = []
    rng = random.Random(12)
    for _ in range(commits):
        time.sleep(rng.uniform(0.03, 0.07))
        t0 = time.monotonic_ns()
        state = store.commit(state.revision, replace(state, next_seq=state.next_seq + 1))
        commit_ms.append((time.monotonic_ns() - t0) / 1e6)
        started[state.revision] = t0
    latencies: list[float] = []
    missing = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        got = {int(r): int(t) for r, t in (line.split() for line in out.splitlines() if line.strip())}
        for revision, t0 in started.items():
            if revision in got:
                latencies.append((got[revision] - t0) / 1e6)
            else:
                missing += 1  # coalesced: a poll saw two commits at once (counted, not timed)
    store.close()
    return {
        "mode": mode,
        "listeners": listeners,
        "commits": commits,
        "samples": len(latencies),
        "coalesced": missing,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
        "commit_p50_ms": percentile(commit_ms, 0.50),
        "commit_p99_ms": percentile(commit_ms, 0.99),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-listener":
        _listener(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--as-fault-listener":
        _fault_listener(sys.argv[2], float(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=8)
    parser.add_argument("--commits", type=int, default=100)
    parser.add_argument("--poll-ms", type=float, default=20.0)
    parser.add_argument(
        "--conninfo", help="an existing server (a database this may write to) instead of a throwaway one"
    )
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument(
        "--faults", action="store_true", help="also crash, restart and hang the server (own cluster only)"
    )
    args = parser.parse_args()
    if not 1 <= args.listeners <= 64 or not 1 <= args.commits <= 10_000:
        parser.error("--listeners must be 1..64 and --commits 1..10000")
    server = start_server(args.conninfo, "rule-engine-bench-pg-")
    if server is None:
        return 2
    cluster, conninfo = server
    try:
        from rule_engine.stores.postgres import PostgresStore

        setup = PostgresStore(conninfo)
        setup.migrate()
        setup.close()
        load = os.getloadavg()
        results = [
            _run_mode(conninfo, mode, args.listeners, args.commits, args.poll_ms / 1000) for mode in ("listen", "poll")
        ]
        faults = _run_faults(cluster, args.listeners) if args.faults and cluster is not None else None
    finally:
        if cluster is not None:
            cluster.destroy()
    listen, poll = results
    print(
        f"PostgreSQL propagation, commit -> {args.listeners} listener processes, {args.commits} commits 30-70 ms apart"
    )
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'mode':<28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'samples':>8}")
    for r in results:
        name = "LISTEN/NOTIFY" if r["mode"] == "listen" else f"poll every {args.poll_ms:g} ms"
        print(f"{name:<28} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f} {r['samples']:8d}")
    print(
        f"ratio listen/poll: p50 {listen['p50_ms'] / poll['p50_ms']:.3f}x, p99 {listen['p99_ms'] / poll['p99_ms']:.3f}x"
    )
    print(f"commit itself: p50 {listen['commit_p50_ms']:.2f} ms, p99 {listen['commit_p99_ms']:.2f} ms")
    if faults is not None:
        f = faults
        print(
            f"crash (pg_ctl stop -m immediate): {f['detected']}/{f['listeners']} listeners stale, "
            f"p50 {f['detect_p50_ms']:.1f} ms, max {f['detect_max_ms']:.1f} ms after the stop began"
        )
        print(
            f"restart: {f['caught_up']}/{f['listeners']} listeners back, p50 {f['catch_up_p50_ms']:.1f} ms, "
            f"max {f['catch_up_max_ms']:.1f} ms after pg_ctl start was run (which itself took {f['pg_ctl_start_ms']:.0f} ms)"
        )
        print(
            f"writer (timeout=1 s): StoreError after {f['writer_stopped_fail_s']:.2f} s with the server stopped, "
            f"{f['writer_hung_fail_s']:.2f} s with it hung; first commit after restart took "
            f"{f['writer_first_commit_after_restart_s'] * 1000:.1f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "results": results, "faults": faults}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
