"""The push follower on a real PostgreSQL server: commits arrive by NOTIFY, a hung server makes it stale
(from the age of its last round trip) while it keeps serving, and it recovers when the server does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _support_postgres import PgCluster
from structlog.testing import capture_logs
from test_postgres_store import _url

from rule_engine import DeploymentManager, RuleEngine
from rule_engine.deployment.follower import STALE_AFTER, PushLoop

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = (ROOT / "bundles" / "gateway-v1.json", ROOT / "bundles" / "gateway-v2.json")
EVENT = {"agent_id": "api_gateway", "flow_id": "login", "user": {"id": "u-1"}, "risk_score": 0.1}
LIVENESS = 30.0  # every wait below gives up (and fails the test) after this long


def _until(condition: Any, what: str) -> Any:
    """Poll ``condition()`` until it is truthy (bounded by LIVENESS); its value."""
    deadline = time.monotonic() + LIVENESS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"still waiting after {LIVENESS:g} s for {what}")


def _line(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else "the worker exited"
    return json.loads(line)  # type: ignore[no-any-return]


def _deploy(url: str, bundle: Path) -> str:
    with DeploymentManager.open(url, follow=False) as writer:
        version_id = writer.prepare_deployment(bundle)
        writer.activate_deployment(version_id)
        return version_id


def test_a_follower_process_is_pushed_the_commit(pg_database: str) -> None:
    """A follower process (no fast poll) serves a version another process deployed, told by NOTIFY."""
    url = _url(pg_database)
    v1 = _deploy(url, BUNDLES[0])
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_support_push.py"), "follow", url, "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert _line(worker) == {"ready": True, "serving": v1, "loop": "PushLoop"}
        v2 = _deploy(url, BUNDLES[1])
        change = _line(worker)
        assert change["serving"] == v2
        assert change["pushed"] >= 1  # the listener got the new revision by NOTIFY, not by its poll
    finally:
        worker.terminate()
        worker.communicate(timeout=LIVENESS)


def test_a_hung_server_makes_the_follower_stale_while_it_serves_and_it_recovers(pg_cluster: PgCluster) -> None:
    """SIGSTOP: stale from the round-trip age (nothing raised yet), still serving; SIGCONT: recovered, follows."""
    url = _url(pg_cluster.conninfo())  # the default 5 s timeout: staleness must come before any error
    v1 = _deploy(url, BUNDLES[0])
    with capture_logs() as logs:
        follower = DeploymentManager.open(url)
        try:
            assert isinstance(follower._threads[0], PushLoop)
            engine = RuleEngine(follower)
            assert engine.evaluate(EVENT, key="u-1").version_id == v1
            _until(lambda: follower._threads[0].pushed + follower._threads[0].reconnected >= 1, "the listener")
            assert follower.stale is None
            pg_cluster.hang()
            try:
                reason = _until(lambda: follower.stale, "the follower to report stale")
                # From the age, before anything raised: the listener's own call gives up only after
                # PUSH_POLL + the 5 s store timeout, and its error would replace this reason.
                assert "has not answered for" in reason
                assert f"(more than {STALE_AFTER:g} s" in reason
                assert engine.evaluate(EVENT, key="u-1").version_id == v1  # the last good snapshot serves on
            finally:
                pg_cluster.resume()
            _until(lambda: follower.stale is None, "the follower to recover")
            v2 = _deploy(url, BUNDLES[1])
            _until(lambda: engine.evaluate(EVENT, key="u-1").version_id == v2, "the follower to serve v2")
        finally:
            follower.close()
        assert not follower._threads  # stopped, and its listener closed
    events = [entry["event"] for entry in logs if entry["event"].startswith("follower.")]
    assert events.count("follower.stale") == 1
    assert events.count("follower.recovered") == 1


def test_a_stopped_server_is_stale_then_caught_up_after_restart(pg_cluster: PgCluster) -> None:
    """pg_ctl stop -m immediate: stale with the reason; after a restart the listener reconnects and follows."""
    url = _url(pg_cluster.conninfo(), timeout="1")
    v1 = _deploy(url, BUNDLES[0])
    with DeploymentManager.open(url) as follower:
        engine = RuleEngine(follower)
        _until(lambda: follower._threads[0].reconnected >= 1, "the listener to connect")
        pg_cluster.stop("immediate")
        reason = _until(lambda: follower.stale, "the follower to report stale")
        assert "StoreError" in reason
        assert engine.evaluate(EVENT, key="u-1").version_id == v1
        pg_cluster.start()
        _until(lambda: follower.stale is None, "the follower to recover")
        v2 = _deploy(url, BUNDLES[1])
        _until(lambda: engine.evaluate(EVENT, key="u-1").version_id == v2, "the follower to serve v2")
        assert follower._threads[0].listener.reconnects >= 1
