"""Peer: LaunchDarkly server-side Python SDK, offline percentage-rollout check.

    benchmarks/.venvs/launchdarkly/bin/python benchmarks/peers/launchdarkly_rollout.py [--repeat 25]

A boolean flag whose fallthrough is a percentage rollout (10% true / 90% false, weights in
1/1000 of a percent) is read from a local JSON file (``Files.new_data_source``, no
auto-update), with ``send_events=False`` and ``diagnostic_opt_out=True``; no SDK key is
ever used against a server and sockets are disabled for the whole run. (``offline=True``
is NOT used: in offline mode ``variation`` returns the default without evaluating.)
Measures ``client.variation(flag, context, False)`` with a prebuilt ``Context`` for a fixed
16-char key, and the same including ``Context.create(key)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
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

FLAG = "bench-rollout-10"
FLAG_DATA = {
    "flags": {
        FLAG: {
            "key": FLAG,
            "version": 1,
            "on": True,
            "salt": "bench-salt",
            "variations": [True, False],
            "offVariation": 1,
            "targets": [],
            "contextTargets": [],
            "rules": [],
            "prerequisites": [],
            "fallthrough": {
                "rollout": {
                    "variations": [
                        {"variation": 0, "weight": 10000},
                        {"variation": 1, "weight": 90000},
                    ]
                }
            },
            "trackEvents": False,
            "trackEventsFallthrough": False,
            "clientSideAvailability": {"usingMobileKey": False, "usingEnvironmentId": False},
        }
    }
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    forbid_network()
    logging.basicConfig(level=logging.ERROR)

    from ldclient.client import LDClient
    from ldclient.config import Config
    from ldclient.context import Context
    from ldclient.integrations import Files
    from ldclient.version import VERSION

    with tempfile.TemporaryDirectory(prefix="ld-bench-") as tmp:
        path = Path(tmp) / "flags.json"
        path.write_text(json.dumps(FLAG_DATA), encoding="utf-8")
        t0 = time.perf_counter()
        config = Config(
            sdk_key="sdk-offline-benchmark",  # never sent anywhere: no network data source
            update_processor_class=Files.new_data_source(paths=[str(path)], auto_update=False),
            send_events=False,
            diagnostic_opt_out=True,
        )
        client = LDClient(config=config, start_wait=5)
        startup_s = time.perf_counter() - t0
        if not client.is_initialized():
            print("LaunchDarkly client did not initialize from the file", flush=True)
            finish(2)

        share = rollout_share(lambda k: client.variation(FLAG, Context.create(k), False) is True)
        require_share(share)
        context = Context.create(HASH_KEY)

        def variation_new_context(key: str) -> Any:
            return client.variation(FLAG, Context.create(key), False)

        ns, baseline_ns = measure_with_baselines(
            {
                "variation": (client.variation, (FLAG, context, False)),
                "variation_new_context": (variation_new_context, (HASH_KEY,)),
            },
            repeat=args.repeat,
        )
        threads = live_threads()
        client.close()  # type: ignore[no-untyped-call]
    emit(
        "launchdarkly",
        VERSION,
        ns,
        baseline_ns,
        rollout_share=round(share, 4),
        startup_s=round(startup_s, 3),
        threads_while_running=threads,
    )
    finish(0)


if __name__ == "__main__":
    main()
