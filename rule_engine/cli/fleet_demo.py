"""``rule-engine demo --processes N``: the demo story across N evaluator processes, showing convergence.

1. ``gateway-v1`` is deployed blue-green; N evaluator processes (``python -m rule_engine.cli.fleet_demo
   worker URL``) follow the store, register in the fleet and send realistic gateway events.
2. ``gateway-v2`` is canaried 10 -> 25 -> 50 -> 100 %. For each stage the demo prints how long after
   the commit the whole fleet served it (read from the fleet rows, as ``rule-engine status`` does), and
   the controller's convergence gate starts the stage clock only then.
3. At the end the workers stop (flushing their health counters); the evaluations of all processes add
   up per version in the store.

On a temporary SQLite file by default, or on ``--store URL`` (PostgreSQL included). Bounded: the
workers exit after ``_WORKER_SECS`` whatever happens, and every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rule_engine.cli.demo import Echo, bundle_text, make_event
from rule_engine.control.instances import expected_serving
from rule_engine.control.strategies import BlueGreen, Canary
from rule_engine.deployment.fleet import FleetPolicy
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.health.thresholds import HealthThresholds
from rule_engine.serving.engine import RuleEngine

__all__ = ["run_fleet_demo", "worker"]

_STAGES = (10, 25, 50, 100)
_WORKER_SECS = 120.0  # a worker never outlives this, even if the demo process dies
_JOIN_SECS = 30.0


def worker(url: str, seconds: float = _WORKER_SECS) -> None:
    """One evaluator process: follow ``url``, evaluate events until stdin closes (or ``seconds`` pass)."""
    stop = threading.Event()

    def wait_for_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    rng = random.Random(os.getpid())
    count = 0
    with DeploymentManager.open(url, poll_interval=0.01) as manager:
        engine = RuleEngine(manager)
        print(json.dumps({"ready": True, "pid": os.getpid(), "instance_id": manager.fleet.instance_id}), flush=True)
        ends = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < ends:
            for _ in range(20):
                event, key = make_event(rng)
                engine.evaluate(event, key=key)
                count += 1
            stop.wait(0.005)
    print(json.dumps({"evaluations": count}), flush=True)


def _spawn(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rule_engine.cli.fleet_demo", "worker", url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def run_fleet_demo(
    processes: int, *, fast: bool = False, store_url: str | None = None, echo: Echo | None = print
) -> dict[str, Any]:
    """Run the story across ``processes`` evaluator processes; returns the summary (``ok`` and more)."""
    say = echo or (lambda _text: None)
    stage_secs = 1.0 if fast else 2.0
    thresholds = HealthThresholds(max_error_rate=0.05, min_evaluations=40, window_secs=3.0, bucket_secs=0.5)
    with tempfile.TemporaryDirectory(prefix="rule-engine-fleet-demo-") as workdir:
        url = store_url or f"sqlite:///{Path(workdir, 'state.db')}"
        manager = DeploymentManager.open(url, follow=False, thresholds=thresholds, auto_rollback=True)
        manager.fleet.policy = FleetPolicy(deadline=10.0, ignore_laggards=True)
        workers: list[subprocess.Popen[str]] = []
        try:
            say(f"rule-engine demo --processes {processes}  (store: {url})")
            say("")
            v1 = manager.prepare_deployment(bundle_text("gateway-v1.json"), BlueGreen(), deployed_by="demo")
            manager.activate_deployment(v1, actor="demo")
            say(f"1. {v1} deployed blue-green; starting {processes} evaluator processes")
            workers = [_spawn(url) for _ in range(processes)]
            for proc in workers:
                assert proc.stdout is not None
                json.loads(proc.stdout.readline() or "{}")
            joined = _wait_converged(manager, processes)
            say(f"   {manager.fleet.view().summary()} ({'joined' if joined is not None else 'NOT all joined'})")
            canary = Canary(_STAGES, stage_secs)
            v2 = manager.prepare_deployment(bundle_text("gateway-v2.json"), canary, deployed_by="demo")
            say("")
            say(f"2. canary {v2}: {canary.describe()}")
            manager.activate_deployment(v2, actor="demo")
            stages = _walk(manager, v2, processes, say)
            problem = None if manager.get_active_version_id() == v2 else f"{v2} did not become active"
        finally:
            counts = _stop(workers)
            manager.refresh()
        totals = manager.store.health(list(manager.state.versions))
        evaluations = {v: c.evaluations for v, c in totals.items()}
        say("")
        say("3. workers stopped; evaluations in the store, summed over every process:")
        for version_id, n in evaluations.items():
            say(f"   {version_id:<36} {n:>9,}")
        if sum(evaluations.values()) != sum(counts):
            problem = problem or f"the store counts {sum(evaluations.values())} evaluations, the workers {sum(counts)}"
        say(
            f"   total {sum(counts):,} evaluations by {processes} processes"
            + (f"; PROBLEM: {problem}" if problem else "")
        )
        manager.close()
        return {
            "ok": problem is None,
            "problem": problem,
            "store": url,
            "processes": processes,
            "stages": stages,
            "evaluations": evaluations,
            "active_version": v2,
        }


def _wait_converged(manager: DeploymentManager, processes: int, timeout: float = _JOIN_SECS) -> float | None:
    """Seconds until ``processes`` instances serve the stored state (None on timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        manager.refresh()
        view = manager.fleet.view()
        if len(view.instances) >= processes and view.converged:
            return time.monotonic() - start
        time.sleep(0.005)
    return None


def _walk(manager: DeploymentManager, candidate: str, processes: int, say: Echo) -> list[dict[str, Any]]:
    """Tick the canary to its end; per stage, how long the fleet took to serve it."""
    stages: list[dict[str, Any]] = []
    seen: tuple[str | None, str | None, float] | None = None
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        manager.refresh()
        expected = expected_serving(manager.state)
        if expected != seen:
            seen = expected
            steps = [e for e in manager.audit_log(candidate, limit=3) if e.action != "converge"]
            committed_at = steps[-1].at if steps else time.time()
            took = _wait_converged(manager, processes, timeout=10.0)
            if took is not None:
                took = max(0.0, time.time() - committed_at)
            share = expected[2] if expected[1] is not None else 100.0
            shown = f"{took * 1000:.0f} ms" if took is not None else "NOT within 10 s"
            say(f"   {share:>5g}% of traffic: all {processes} processes serve it {shown} after the commit")
            stages.append({"percent": share, "converged_secs": took})
            if expected[1] is None and manager.get_active_version_id() == candidate:
                break
        manager.tick()
        time.sleep(0.05)
    return stages


def _stop(workers: list[subprocess.Popen[str]]) -> list[int]:
    """Close every worker's stdin, collect its evaluation count; kill one that does not exit."""
    counts: list[int] = []
    for proc in workers:
        if proc.stdin is not None:
            proc.stdin.close()
    for proc in workers:
        try:
            proc.wait(timeout=_JOIN_SECS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out = ""
        if proc.stdout is not None:
            out = proc.stdout.read()
            proc.stdout.close()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        counts.extend(int(line["evaluations"]) for line in lines if "evaluations" in line)
    return counts


if __name__ == "__main__":  # pragma: no cover - run by the demo as a subprocess
    if len(sys.argv) >= 3 and sys.argv[1] == "worker":
        worker(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else _WORKER_SECS)
    else:
        sys.exit("usage: python -m rule_engine.cli.fleet_demo worker URL [SECONDS]")
