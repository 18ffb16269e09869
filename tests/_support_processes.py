"""Worker processes for the multi-process and crash tests: ``python tests/_support_processes.py ROLE ARGS...``.

Each role opens the store named on its command line and writes one JSON line per result to stdout
(flushed), or to a side file that it fsyncs after every line (the crash workers: a line written
there is a promise the store must keep after SIGKILL).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")
SCRIPT = Path(__file__).resolve()

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rule_engine import (  # noqa: E402
    BlueGreen,
    Canary,
    DeploymentManager,
    HealthThresholds,
    RuleEngineError,
)


def spawn(role: str, *args: object, stdin: Any = None) -> subprocess.Popen[str]:
    """Start a worker process running ``role``."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), role, *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class _SideFile:
    """Append-only JSON lines, each fsynced before the next operation starts."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, **fields: Any) -> None:
        os.write(self._fd, (json.dumps(fields) + "\n").encode())
        os.fsync(self._fd)


def deploy(url: str, bundle: str) -> None:
    """Prepare and activate one bundle blue-green; report the version id and revision."""
    with DeploymentManager.open(url, follow=False) as manager:
        version_id = manager.prepare_deployment(bundle, deployed_by="proc")
        manager.activate_deployment(version_id, actor="proc")
        _emit(version_id=version_id, revision=manager.snapshot.revision)


def watch(url: str, seconds: str) -> None:
    """Follow the store; print every change of the active version with the time it was first seen."""
    deadline = time.monotonic() + float(seconds)
    with DeploymentManager.open(url) as manager:  # the default poll interval
        seen = manager.get_active_version_id()
        _emit(ready=True, active=seen)
        while time.monotonic() < deadline:
            active = manager.get_active_version_id()
            if active != seen:
                seen = active
                _emit(active=active, at=time.time())
            if sys.stdin.closed:
                break
            time.sleep(0.0005)
        _emit(final=True, active=manager.get_active_version_id(), revision=manager.snapshot.revision)


def converge(url: str, target_revision: str, seconds: str) -> None:
    """Follow the store until it reaches ``target_revision``; report what serves then."""
    deadline = time.monotonic() + float(seconds)
    with DeploymentManager.open(url, poll_interval=0.01) as manager:
        _emit(ready=True)
        while manager.snapshot.revision < int(target_revision) and time.monotonic() < deadline:
            time.sleep(0.005)
        snapshot = manager.snapshot
        _emit(
            revision=snapshot.revision,
            active=manager.get_active_version_id(),
            candidate=snapshot.candidate.version_id if snapshot.candidate else None,
            share_bp=snapshot.share_bp,
        )


def random_ops(url: str, seed: str, count: str) -> None:
    """Run ``count`` random operations; report each success (and the revision it committed, if any)."""
    rng = random.Random(int(seed))
    with DeploymentManager.open(url, follow=False, max_commit_retries=500) as manager:
        for _ in range(int(count)):
            op = rng.choice(
                ["prepare", "prepare-canary", "activate", "activate", "advance", "promote", "rollback", "health"]
            )
            args = _args(manager, op, rng)
            try:
                result, committed = _operate(manager, op, args)
            except RuleEngineError as exc:
                _emit(op=op, args=args, ok=False, error=type(exc).__name__)
                continue
            revision = manager.snapshot.revision if committed else None
            _emit(op=op, args=args, ok=True, result=result, revision=revision)


def _args(manager: DeploymentManager, op: str, rng: random.Random) -> list[str]:
    if op.startswith("prepare"):
        return [str(rng.choice(BUNDLES))]
    if op == "activate":
        history = manager.get_deployment_history()
        return [rng.choice(history)] if history else ["nothing"]
    return []


def _operate(manager: DeploymentManager, op: str, args: list[str]) -> tuple[Any, bool]:
    """Run one operation; return its result and whether it committed a new revision."""
    if op == "prepare":
        return manager.prepare_deployment(args[0], deployed_by="proc"), True
    if op == "prepare-canary":
        return manager.prepare_deployment(args[0], Canary((10, 50, 100), 0.0), deployed_by="proc"), True
    if op == "activate":
        manager.activate_deployment(args[0], actor="proc")
        return None, True
    if op == "advance":
        moved = manager.advance_rollout(actor="proc")
        return moved, moved
    if op == "promote":
        return manager.promote(actor="proc"), True
    if op == "rollback":
        return manager.rollback(actor="proc"), True
    active = manager.get_active_version_id()
    if active is not None:
        manager.update_health_metrics(active, 10, 1)
    return active, False


def ticker(url: str, seconds: str) -> None:
    """Run ``tick()`` in a loop for ``seconds``; report what it did."""
    deadline = time.monotonic() + float(seconds)
    thresholds = HealthThresholds(min_evaluations=0)
    actions: list[str] = []
    with DeploymentManager.open(url, follow=False, thresholds=thresholds, max_commit_retries=200) as manager:
        _emit(ready=True)
        while time.monotonic() < deadline:
            actions.extend(manager.tick().actions)
            time.sleep(0.002)
    _emit(actions=actions)


def crash_worker(url: str, side_file: str, seed: str) -> None:
    """Deploy, activate, advance, promote, roll back and add health in a loop until killed.

    After each success, append what the store must now hold to ``side_file`` (fsynced).
    """
    rng = random.Random(int(seed))
    side = _SideFile(side_file)
    health_added: dict[str, int] = {}
    with DeploymentManager.open(url, follow=False, max_commit_retries=1000) as manager:
        while True:
            op = rng.choice(["deploy", "canary", "activate", "advance", "promote", "rollback", "health"])
            try:
                if op in ("deploy", "canary"):
                    strategy = Canary((20, 100), 0.0) if op == "canary" else BlueGreen()
                    version_id = manager.prepare_deployment(str(rng.choice(BUNDLES)), strategy, deployed_by="crash")
                    side.write(op="prepare", version_id=version_id, revision=manager.snapshot.revision)
                elif op == "activate":
                    staged = [v for v in manager.get_deployment_history() if v not in _serving(manager)]
                    if staged:
                        manager.activate_deployment(staged[-1], actor="crash", supersede=True)
                        side.write(op="activate", version_id=staged[-1], revision=manager.snapshot.revision)
                elif op == "advance":
                    if manager.advance_rollout(actor="crash"):
                        side.write(op="advance", revision=manager.snapshot.revision)
                elif op == "promote":
                    side.write(
                        op="promote", version_id=manager.promote(actor="crash"), revision=manager.snapshot.revision
                    )
                elif op == "rollback":
                    side.write(
                        op="rollback", version_id=manager.rollback(actor="crash"), revision=manager.snapshot.revision
                    )
                else:
                    active = manager.get_active_version_id()
                    if active is not None:
                        manager.update_health_metrics(active, 5, 0)
                        health_added[active] = health_added.get(active, 0) + 5
                        side.write(op="health", version_id=active, total=health_added[active])
            except RuleEngineError:
                pass


def zygote(url: str) -> None:
    """Fork a crash worker per ``SIDE_FILE SEED`` line on stdin (imports done once, so a worker starts in
    milliseconds); print each worker's pid. A kill may land while a worker is still opening the store."""
    import signal

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    for line in sys.stdin:
        side_file, seed = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                sys.stdin.close()
                errors = os.open(side_file + ".err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(errors, 2)  # a worker's own failure is reported next to its side file
                crash_worker(url, side_file, seed)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(1)
        _emit(pid=pid)


def _serving(manager: DeploymentManager) -> set[str | None]:
    snapshot = manager.snapshot
    return {
        snapshot.stable.version_id if snapshot.stable else None,
        snapshot.candidate.version_id if snapshot.candidate else None,
    }


ROLES = {
    "deploy": deploy,
    "watch": watch,
    "converge": converge,
    "random-ops": random_ops,
    "ticker": ticker,
    "crash-worker": crash_worker,
    "zygote": zygote,
}

if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    ROLES[sys.argv[1]](*sys.argv[2:])
