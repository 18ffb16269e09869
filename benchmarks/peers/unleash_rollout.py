"""Peer: Unleash Python SDK (``UnleashClient``), offline percentage-rollout check.

    benchmarks/.venvs/unleash/bin/python benchmarks/peers/unleash_rollout.py [--repeat 25]

A toggle with a ``flexibleRollout`` strategy at 10% (stickiness userId) is bootstrapped
from a dict into a FileCache in a temp dir; the client is started with
``disable_metrics``/``disable_registration`` and ``initialize_client(fetch_toggles=False)``
(offline connector: reads the cache only). Sockets are disabled for the whole run.
Measures ``client.is_enabled(name, {"userId": key})`` for a fixed 16-char key.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from importlib.metadata import version

from _peer_common import (
    HASH_KEY,
    emit,
    finish,
    forbid_network,
    live_threads,
    measure_with_baselines,
    require_share,
    rollout_share,
)

TOGGLE = "bench.rollout-10"
FEATURES = {
    "version": 2,
    "features": [
        {
            "name": TOGGLE,
            "type": "release",
            "enabled": True,
            "strategies": [
                {
                    "name": "flexibleRollout",
                    "parameters": {"rollout": "10", "stickiness": "userId", "groupId": TOGGLE},
                    "constraints": [],
                }
            ],
        }
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    forbid_network()
    logging.basicConfig(level=logging.ERROR)

    from UnleashClient.cache import FileCache
    from UnleashClient.clients.unleash_client import UnleashClient

    with tempfile.TemporaryDirectory(prefix="unleash-bench-") as cache_dir:
        t0 = time.perf_counter()
        cache = FileCache("bench", directory=cache_dir)
        cache.bootstrap_from_dict(FEATURES)
        client = UnleashClient(
            url="http://127.0.0.1:9/api",  # never contacted (offline connector)
            app_name="rule-engine-bench",
            disable_metrics=True,
            disable_registration=True,
            refresh_interval=3600,
            cache=cache,
        )
        client.initialize_client(fetch_toggles=False)
        startup_s = time.perf_counter() - t0
        share = rollout_share(lambda k: client.is_enabled(TOGGLE, {"userId": k}))
        require_share(share)
        ctx = {"userId": HASH_KEY}
        ns, baseline_ns = measure_with_baselines({"is_enabled": (client.is_enabled, (TOGGLE, ctx))}, repeat=args.repeat)
        threads = live_threads()
        client.destroy()
    emit(
        "unleash",
        version("UnleashClient"),
        ns,
        baseline_ns,
        engine=f"yggdrasil-engine {version('yggdrasil-engine')}",
        rollout_share=round(share, 4),
        startup_s=round(startup_s, 3),
        threads_while_running=threads,
    )
    finish(0)


if __name__ == "__main__":
    main()
