"""The fleet across real processes: registration, health adding up, and the demo across N processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from rule_engine import DeploymentManager
from rule_engine.cli import cli
from rule_engine.cli.demo import bundle_text
from rule_engine.cli.fleet_demo import _spawn, _stop


def test_evaluator_processes_register_and_their_health_adds_up(tmp_path: Path) -> None:
    """Two processes following one store each have a fleet row; their counters add up per version."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    manager = DeploymentManager.open(url, follow=False)
    version = manager.prepare_deployment(bundle_text("gateway-v1.json"))
    manager.activate_deployment(version)
    workers = [_spawn(url) for _ in range(2)]
    try:
        ready = [json.loads(w.stdout.readline()) for w in workers if w.stdout is not None]
        assert sorted(r["pid"] for r in ready) == sorted(w.pid for w in workers)
        deadline = time.monotonic() + 20
        rows = manager.store.instances()
        while len(rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            rows = manager.store.instances()
        assert sorted(i.pid for i in rows) == sorted(w.pid for w in workers)
        assert all(i.serving == [version] for i in rows)
        assert manager.fleet.view().converged
    finally:
        counts = _stop(workers)
    assert len(counts) == 2
    assert all(n > 0 for n in counts)
    assert manager.store.health([version])[version].evaluations == sum(counts)
    assert manager.store.instances() == []  # each left on close
    manager.close()


def test_the_demo_across_processes_shows_convergence_per_stage() -> None:
    """`rule-engine demo --processes 2 --fast --json`: every stage converged, counters add up."""
    result = CliRunner().invoke(cli, ["demo", "--processes", "2", "--fast", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ok"], summary["problem"]
    assert [s["percent"] for s in summary["stages"]] == [10, 25, 50, 100]
    assert all(s["converged_secs"] is not None for s in summary["stages"])
