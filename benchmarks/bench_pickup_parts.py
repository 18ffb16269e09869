"""Issue 12, wave 5: the parts of a follower's pickup and of a commit, each against its baseline in the same run.

    .venv/bin/python benchmarks/bench_pickup_parts.py [--rounds 60] [--conninfo CONNINFO]

1. **State decode** (no server): a 10-version state document decoded by ``decode_state`` (everything
   decoded) and by a primed ``StateDecoder`` (the records of unchanged versions reused), against
   ``json.loads`` of the same text. Median of 2,000 calls each, interleaved, thread CPU.
2. **A commit on PostgreSQL** (a throwaway cluster, as the suite starts): ``activate_deployment``'s
   ``PostgresStore.commit`` in pipeline mode (two round trips) against the same commit with the
   pipeline switched off (each statement its own round trip), alternating, median wall time.
3. **Server CPU of the pickup's statements**: the state load (``doc::text`` of the jsonb document and
   the meta join) against ``SELECT`` of the same document stored as ``text``, and the heartbeat's
   upsert against a plain ``UPDATE`` of the row, each run 3,000 times on one connection; the server
   process's CPU from ``/proc`` (10 ms ticks: a mean over many calls), with ``SELECT 1`` as the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for extra in (ROOT, ROOT / "tests", HERE):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import structlog  # noqa: E402
from bench_postgres import start_server  # noqa: E402
from bench_propagation import _url  # noqa: E402

from rule_engine import DeploymentManager  # noqa: E402
from rule_engine.stores.integrity import StateDecoder, decode_state  # noqa: E402

BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")


def _medians_us(calls: dict[str, Any], n: int) -> dict[str, float]:
    """Median thread CPU of each call, the calls interleaved round-robin (so drift hits them alike)."""
    times: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            started = time.thread_time_ns()
            call()
            times[name].append(time.thread_time_ns() - started)
    return {name: statistics.median(values) / 1e3 for name, values in times.items()}


def decode_figures() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pickup-") as tmp:
        manager = DeploymentManager.open(f"sqlite:///{tmp}/s.db", follow=False)
        for i in range(12):
            manager.activate_deployment(manager.prepare_deployment(BUNDLES[i % 2]))
        state = manager.store.load()
        manager.close()
    text = json.dumps(state.to_dict())
    decoder = StateDecoder()
    decoder(text, 1, "bench")
    figures = _medians_us(
        {
            "json": lambda: json.loads(text),
            "full": lambda: decode_state(text, 1, "bench"),
            "reused": lambda: decoder(text, 1, "bench"),
        },
        2000,
    )
    base, full, reused = figures["json"], figures["full"], figures["reused"]
    print(f"state decode, {len(state.versions)} versions, {len(text):,} bytes (thread CPU, median):")
    print(f"  json.loads (baseline)            {base:7.1f} us  1.00x")
    print(f"  decode_state (all decoded)       {full:7.1f} us  {full / base:.2f}x")
    print(f"  StateDecoder (unchanged reused)  {reused:7.1f} us  {reused / base:.2f}x")


def commit_figures(url: str, rounds: int) -> None:
    writer = DeploymentManager.open(url, follow=False)
    store: Any = writer.store
    run, commit = store._run, store.commit
    timings: dict[bool, list[float]] = {True: [], False: []}
    pipelined = [True]

    def run_as_asked(what: str, work: Any, **options: Any) -> Any:
        return run(what, work, **{**options, "pipeline": options.get("pipeline", False) and pipelined[0]})

    def timed_commit(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return commit(*args, **kwargs)
        finally:
            timings[pipelined[0]].append(time.perf_counter() - started)

    store._run, store.commit = run_as_asked, timed_commit
    for i in range(rounds):
        pipelined[0] = i % 2 == 0
        version_id = writer.prepare_deployment(BUNDLES[i % 2])
        writer.activate_deployment(version_id)
    writer.close()
    on, off = (statistics.median(timings[mode]) * 1e3 for mode in (True, False))
    print(f"PostgresStore.commit (prepare and activate, {rounds} rounds alternating, wall, median):")
    print(f"  pipeline off, a round trip per statement (baseline)  {off:6.2f} ms  1.00x")
    print(f"  pipeline on, two round trips                         {on:6.2f} ms  {on / off:.2f}x")


def server_figures(url: str, conninfo: str, cluster: Any) -> None:
    import psycopg

    writer = DeploymentManager.open(url, follow=False)
    for i in range(10):
        writer.activate_deployment(writer.prepare_deployment(BUNDLES[i % 2]))
    writer.fleet.beat()
    deployment = writer.store.deployment  # type: ignore[attr-defined]
    tick = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        doc = conn.execute("SELECT doc::text FROM state").fetchone()[0]  # type: ignore[index]
        conn.execute("CREATE TEMP TABLE text_state (id int PRIMARY KEY, doc text)")
        conn.execute("INSERT INTO text_state VALUES (1, %s)", (doc,))
        instance_id, instance_doc = conn.execute("SELECT instance_id, doc::text FROM instances").fetchone()  # type: ignore[misc]

        def server_us(sql: str, params: tuple[Any, ...] = (), n: int = 3000) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            before = int(fields[11]) + int(fields[12])
            for _ in range(n):
                conn.execute(sql, params)
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12]) - before) / tick / n * 1e6

        floor = server_us("SELECT 1")
        load = server_us(
            "SELECT d.revision, m.store_id, d.audit_chain_from, d.audit_head, s.doc::text FROM meta m"
            " LEFT JOIN deployments d ON d.name = %s LEFT JOIN state s ON s.deployment = %s WHERE m.id = 1",
            (deployment, deployment),
        )
        text = server_us("SELECT doc FROM text_state WHERE id = 1")
        upsert = server_us(
            "INSERT INTO instances (instance_id, last_seen, doc, deployment) VALUES (%s, %s, %s::jsonb, %s)"
            " ON CONFLICT (instance_id) DO UPDATE SET last_seen = excluded.last_seen, doc = excluded.doc,"
            " deployment = excluded.deployment",
            (instance_id, time.time(), instance_doc, deployment),
        )
        update = server_us(
            "UPDATE instances SET last_seen = %s, doc = %s::jsonb, deployment = %s WHERE instance_id = %s",
            (time.time(), instance_doc, deployment, instance_id),
        )
    writer.close()
    print(f"server CPU per statement ({len(doc):,}-byte state; /proc, mean of 3,000):")
    print(f"  SELECT 1 (floor)                                  {floor:6.1f} us")
    print(f"  the state load (jsonb doc::text, meta join)       {load:6.1f} us  {load / text:.2f}x the text column")
    print(f"  the same document stored as text (baseline)       {text:6.1f} us  1.00x")
    print(f"  the heartbeat's upsert                            {upsert:6.1f} us  {upsert / update:.2f}x the UPDATE")
    print(f"  a plain UPDATE of the row (baseline)              {update:6.1f} us  1.00x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--conninfo", help="an existing server (a database this may write to)")
    args = parser.parse_args()
    if not 2 <= args.rounds <= 1000:
        parser.error("--rounds must be 2..1000")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    decode_figures()
    server = start_server(args.conninfo, "rule-engine-bench-pickup-")
    if server is None:
        return 2
    cluster, conninfo = server
    try:
        commit_figures(_url(conninfo), args.rounds)
        server_figures(_url(conninfo), conninfo, cluster)
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
