"""Worker processes for the push-follower tests and benchmark: ``python tests/_support_push.py ROLE ARGS...``.

A worker runs until SECONDS have passed or it is terminated.

``follow URL SECONDS``: a manager following the store (pushed on PostgreSQL); prints ``{"ready": ...}``,
then one line per change of the version that decides an event: the version, when it was first served
(``time.time()``), and how the follower's listener got the revision (``pushed`` / ``polled`` counts).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rule_engine import DeploymentManager, RuleEngine  # noqa: E402

EVENT = {"agent_id": "api_gateway", "flow_id": "login", "user": {"id": "u-1"}, "risk_score": 0.1}


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def follow(url: str, seconds: str, mode: str = "push", poll: str = "0.02") -> None:
    """Follow ``url`` (``mode`` push: the store's listener; poll: a polling loop every ``poll`` s)."""
    from rule_engine.deployment.background import BackgroundLoop

    deadline = time.monotonic() + float(seconds)
    manager = DeploymentManager.open(url, follow=False)
    if mode == "push":
        loop = manager.start_following(poll_interval=30.0)  # a polling loop this slow would miss the test
    else:
        step = manager._follower.step_with_flush(manager._health, manager._clock, 1.0)
        loop = manager._start(BackgroundLoop("rule-engine-follower", float(poll), step))
    engine = RuleEngine(manager)
    seen = engine.evaluate(EVENT, key="u-1").version_id
    _emit(ready=True, serving=seen, loop=type(loop).__name__)
    try:
        while time.monotonic() < deadline:
            serving = engine.evaluate(EVENT, key="u-1").version_id
            if serving != seen:
                seen = serving
                at = time.time()
                pushed, polled = getattr(loop, "pushed", 0), getattr(loop, "polled", 0)
                _emit(serving=serving, at=at, pushed=pushed, polled=polled, revision=manager.snapshot.revision)
            time.sleep(0.0002)
    finally:
        manager.close()
    _emit(final=True, serving=seen)


if __name__ == "__main__":
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    {"follow": follow}[sys.argv[1]](*sys.argv[2:])
