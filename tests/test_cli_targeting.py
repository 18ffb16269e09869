"""The targeting commands: deploy --agents/--flows, pin, unpin, and what status shows of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rule_engine import DeploymentManager
from rule_engine.cli import cli

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
V1, V2 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2"))


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite store in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def run(store_url: str) -> Any:
    """Invoke the CLI in-process on the test's store."""

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, ["--store", store_url, *args])

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result: Result, fragment: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def _scoped_rollout(run: Any) -> tuple[str, str]:
    stable = ok_json(run("deploy", V1, "--json"))["version_id"]
    deployed = ok_json(
        run("deploy", V2, "--stages", "10,100", "--agents", "api_gateway", "--flows", "login, checkout", "--json")
    )
    assert deployed["strategy"]["agents"] == ["api_gateway"]
    assert deployed["strategy"]["flows"] == ["checkout", "login"]
    return stable, deployed["version_id"]


def test_deploy_with_a_scope_pin_unpin_and_status_json(run: Any, store_url: str) -> None:
    """A scoped canary shows its scope and pin count in status --json; pin/unpin answer in JSON and audit."""
    stable, candidate = _scoped_rollout(run)
    rollout = ok_json(run("status", "--json"))["rollout"]
    assert rollout["scope"] == {"agents": ["api_gateway"], "flows": ["checkout", "login"]}
    assert rollout["pins"] == 0
    pinned = ok_json(
        run("pin", "qa-2", "qa-1", "qa-1", "--version", candidate, "--reason", "QA", "--by", "ann", "--json")
    )
    assert pinned == {"version_id": candidate, "keys": ["qa-1", "qa-2"], "changed": 2, "pins": 2}
    assert ok_json(run("pin", "vip-1", "--version", stable, "--json"))["pins"] == 3
    assert ok_json(run("status", "--json"))["rollout"]["pins"] == 3
    unpinned = ok_json(run("unpin", "qa-1", "nobody", "--json"))
    assert unpinned == {"keys": ["nobody", "qa-1"], "unpinned": 1, "pins": 2}
    human = run("status")
    assert "scope: agents api_gateway; flows checkout, login; 2 pinned key(s)" in human.stdout
    with DeploymentManager.open(store_url, follow=False) as manager:
        entries = [e for e in manager.audit_log() if e.action in ("pin", "unpin")]
        assert next((e.action, e.actor) for e in entries) == ("pin", "ann")
        assert entries[0].reason.startswith("pinned 2 key(s) to the candidate: qa-1, qa-2; QA [os: ")
        route = manager.route("qa-2", {"agent_id": "api_gateway", "flow_id": "login"})
        assert route is not None
        assert route.version_id == candidate


def test_targeting_mistakes_are_one_line_errors(run: Any) -> None:
    """No rollout, an unknown version, a scope on blue-green, a malformed list: one error line, no trace."""
    ok_json(run("deploy", V1, "--json"))
    one_line_error(run("pin", "qa-1", "--version", "nope"), "no rollout is in progress")
    one_line_error(run("deploy", V2, "--agents", "api_gateway"), "cannot be limited to agents or flows", code=2)
    one_line_error(run("deploy", V2, "--stages", "10,100", "--flows", "login,,checkout"), "comma-separated", code=2)
    deployed = ok_json(run("deploy", V2, "--stages", "10,100", "--json"))
    assert "agents" not in deployed["strategy"]
    one_line_error(run("pin", "qa-1", "--version", "nope"), "Version not found")
    one_line_error(run("pin", "x" * 300, "--version", deployed["version_id"]), "is not a key")
    assert run("pin", "--version", deployed["version_id"]).exit_code == 2  # KEY... is required
