"""Where a follower's pickup of a commit spends its CPU, on PostgreSQL (issue 12).

    .venv/bin/python benchmarks/profile_fleet_pickup.py [--versions 60] [--conninfo CONNINFO]

Starts a throwaway PostgreSQL cluster (as the test suite does; ``--conninfo`` uses an existing
server), a writer manager and a follower manager in this process. For each version the writer
prepares the example gateway bundle (v1 and v2 alternately), the follower picks the commit up
(as its push loop does: the notification received by its listener, ``Follower.notified`` +
``refresh`` + ``fleet.beat``), the writer activates it, the follower picks that up. Each version's
bundle has a new version number, so its digest is new and the follower compiles it (at the prepare's
pickup: the activation's serves the table compiled then). Printed, per version: the follower thread's
CPU (``time.thread_time``) for each of the two pickups, and how much of both each store call, the
listener's wait and the compile took, with their counts. Only the follower's calls are counted (the
writer runs in the same thread, outside them).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
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
from rule_engine.deployment import publisher as publisher_module  # noqa: E402
from rule_engine.evaluation import table as table_module  # noqa: E402

BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")


class Accounts:
    """Thread CPU and call counts per label, only while ``on``."""

    def __init__(self) -> None:
        self.cpu: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.on = False

    def wrap(self, owner: Any, name: str, label: str) -> None:
        real: Callable[..., Any] = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return real(*args, **kwargs)
            self.calls[label] += 1
            started = time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self.cpu[label] += time.thread_time() - started

        setattr(owner, name, counted)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=60)
    parser.add_argument("--conninfo", help="an existing server (a database this may write to)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    server = start_server(args.conninfo, "rule-engine-profile-pickup-")
    if server is None:
        return 2
    cluster, conninfo = server
    url = _url(conninfo)
    accounts = Accounts()
    try:
        writer = DeploymentManager.open(url, follow=False)
        writer.activate_deployment(writer.prepare_deployment(BUNDLES[0]))
        follower = DeploymentManager.open(url, follow=False)
        store = follower.store
        for name in ("_run", "mark", "load", "bundle_json", "heartbeat"):
            accounts.wrap(store, name, f"store.{name}")
        accounts.wrap(publisher_module, "load_checked_bundle", "bundle read + parse + digest check")
        accounts.wrap(table_module.RuleTable, "from_bundle", "compile")
        follower.fleet.beat()
        listener = store.listen()  # type: ignore[attr-defined]
        listener.wait_for_change(1.0)
        accounts.wrap(listener, "wait_for_change", "listener.wait_for_change (the notification)")
        totals: collections.Counter[str] = collections.Counter()

        def pickup(kind: str) -> None:
            accounts.on = True
            started = time.thread_time()
            revision = listener.wait_for_change(5.0)
            assert revision is not None
            assert listener.last_via == "notify"
            follower._follower.notified(revision)
            follower.refresh()
            follower.fleet.beat()
            totals[kind] += time.thread_time() - started
            accounts.on = False

        for i in range(args.versions):
            bundle = json.loads(BUNDLES[i % 2].read_text())
            bundle["version"] = f"7.{i}.0"
            version_id = writer.prepare_deployment(bundle)
            pickup("prepare")
            writer.activate_deployment(version_id)
            pickup("activation")
            assert follower.get_active_version_id() == version_id
        listener.close()
        n = args.versions
        print(
            f"per version: follower thread CPU {sum(totals.values()) / n * 1e3:.3f} ms"
            f" (the prepare's pickup {totals['prepare'] / n * 1e3:.3f} ms,"
            f" the activation's {totals['activation'] / n * 1e3:.3f} ms)"
        )
        for label, cpu in accounts.cpu.most_common():
            print(f"  {label:40s} {cpu / n * 1e3:7.3f} ms   {accounts.calls[label] / n:.1f} calls")
        follower.close()
        writer.close()
    finally:
        if cluster is not None:
            cluster.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
