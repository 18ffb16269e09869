"""Peer: GrowthBook Python SDK, offline percentage-rollout check.

    benchmarks/.venvs/growthbook/bin/python benchmarks/peers/growthbook_rollout.py [--repeat 25]

A feature with one rollout rule (``force: true``, ``coverage: 0.1``, hashed on ``id``) is
passed inline via ``features=`` (no ``api_host``/``client_key``: nothing to fetch, no
streaming); sockets are disabled for the whole run. Measures ``gb.is_on(feature)`` with
the attributes already set for a fixed 16-char key, and ``set_attributes`` + ``is_on``
(the per-request pattern when one GrowthBook instance serves many users).
"""

from __future__ import annotations

import argparse
import logging
import time
from importlib.metadata import version
from typing import Any

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

FEATURE = "bench-rollout-10"
FEATURES = {
    FEATURE: {
        "defaultValue": False,
        "rules": [{"force": True, "coverage": 0.1, "hashAttribute": "id"}],
    }
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    forbid_network()
    logging.basicConfig(level=logging.ERROR)

    from growthbook import GrowthBook

    t0 = time.perf_counter()
    gb = GrowthBook(features=FEATURES, attributes={"id": HASH_KEY})
    startup_s = time.perf_counter() - t0

    def check(key: str) -> bool:
        gb.set_attributes({"id": key})
        return bool(gb.is_on(FEATURE))

    share = rollout_share(check)
    require_share(share)
    gb.set_attributes({"id": HASH_KEY})
    attrs = {"id": HASH_KEY}

    def set_and_check(a: dict[str, Any]) -> bool:
        gb.set_attributes(a)
        return gb.is_on(FEATURE)

    ns, baseline_ns = measure_with_baselines(
        {
            "is_on": (gb.is_on, (FEATURE,)),
            "set_attributes_is_on": (set_and_check, (attrs,)),
        },
        repeat=args.repeat,
    )
    threads = live_threads()
    gb.destroy()
    emit(
        "growthbook",
        version("growthbook"),
        ns,
        baseline_ns,
        rollout_share=round(share, 4),
        startup_s=round(startup_s, 3),
        threads_while_running=threads,
    )
    finish(0)


if __name__ == "__main__":
    main()
