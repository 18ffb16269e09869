"""What a follower's poll costs: ``store.revision()`` on SQLite, one deployment vs one of several.

    .venv/bin/python benchmarks/bench_revision_poll.py [--deployments 1] [--calls 5000]

A follower calls ``revision()`` every ``poll_interval`` (20 ms). Since a store holds several
deployments the call is one single-row ``SELECT`` joining ``meta`` and the deployment's row of
``deployments`` (plus the ``lstat`` of the file it always did). Prints the best of 5 rounds per call, in
microseconds; to compare with the code before deployments existed, run the same script with that
code first on the path (``git archive 431161c rule_engine bundles | tar -x -C /tmp/old`` then
``PYTHONPATH=/tmp/old .venv/bin/python benchmarks/bench_revision_poll.py``; ``--deployments`` must
stay 1 there). No goal: a ratio against the old figure, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rule_engine
from rule_engine import DeploymentManager


def main() -> None:
    """Open a store of ``--deployments`` deployments, time ``revision()`` of the first."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    bundles = Path(rule_engine.__file__).resolve().parent.parent / "bundles"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/state.db"
        managers = []
        for i in range(args.deployments):
            named = {"deployment": f"policy-{i}"} if args.deployments > 1 else {}
            manager = DeploymentManager.open(url, follow=False, **named)  # type: ignore[arg-type]
            manager.activate_deployment(manager.prepare_deployment(bundles / "gateway-v1.json"))
            managers.append(manager)
        store = managers[0].store
        for _ in range(1000):
            store.revision()
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(args.calls):
                store.revision()
            best = min(best, (time.perf_counter() - started) / args.calls)
        print(f"{rule_engine.__file__}: revision() {best * 1e6:.1f} us per call ({args.deployments} deployment(s))")
        for manager in managers:
            manager.close()


if __name__ == "__main__":
    main()
