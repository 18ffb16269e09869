"""The lifecycle from the command line: pause, resume, abort, retry, undo, activate, cancel, experiment, status
(--json shapes of docs/cli.md, the scheduled list, --watch piped), deploy warnings and refusals, validate -v,
evaluate --explain, the audit's origin and version-id completion."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rule_engine import DeploymentManager
from rule_engine.cli import cli
from rule_engine.cli._common import os_account
from rule_engine.cli.completion import complete_versions
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2

V1, V2 = str(GATEWAY_V1), str(GATEWAY_V2)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", url, *args])


def ok(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _canary(url: str) -> tuple[str, str]:
    stable = ok(run(url, "deploy", V1, "--json"))["version_id"]
    candidate = ok(run(url, "deploy", V2, "--stages", "10,50,100", "--stage-duration", "60", "--json"))["version_id"]
    return stable, candidate


def test_pause_and_resume_show_in_status_json(url: str) -> None:
    """pause -> status --json rollout.paused is true and next_step_at null; resume gives it back."""
    _, candidate = _canary(url)
    data = ok(run(url, "pause", "--reason", "graph", "--by", "alice", "--json"))
    assert data["paused"] == candidate
    assert data["rollout"]["paused"] is True
    status = ok(run(url, "status", "--json"))
    assert status["rollout"]["paused"] is True
    assert status["rollout"]["next_step_at"] is None
    human = run(url, "status").stdout
    assert "PAUSED" in human
    assert "still holds it" in human
    ok(run(url, "resume", "--json"))
    status = ok(run(url, "status", "--json"))
    assert status["rollout"]["paused"] is False
    assert status["rollout"]["next_step_at"] is not None
    paused = [e for e in ok(run(url, "history", "--json"))["audit"] if e["action"] == "pause"]
    assert [(e["actor"], e["reason"], e["origin"]) for e in paused] == [("alice", "graph", os_account())]


def test_abort_then_retry_from_the_cli(url: str) -> None:
    """abort leaves the candidate aborted with stable serving; retry restarts it at its first stage, same salt."""
    stable, candidate = _canary(url)
    data = ok(run(url, "abort", "--json"))
    assert data == {"aborted": candidate, "state": "aborted", "active_version": stable, "rollout": None}
    versions = {v["version_id"]: v["state"] for v in ok(run(url, "status", "--json"))["versions"]}
    assert versions[candidate] == "aborted"
    data = ok(run(url, "retry", "--json"))
    assert data["retried"] == candidate
    assert data["rollout"]["stage"] == 1
    assert data["rollout"]["salt"] == candidate


def test_undo_to_a_version_from_the_cli(url: str) -> None:
    """undo --to VERSION makes it active again; without --to, the previous one."""
    v1 = ok(run(url, "deploy", V1, "--json"))["version_id"]
    v2 = ok(run(url, "deploy", V2, "--json"))["version_id"]
    data = ok(run(url, "undo", "--json"))
    assert (data["undone_to"], data["previous_version"], data["active_version"]) == (v1, v2, v1)
    data = ok(run(url, "undo", "--to", v2, "--stages", "50,100", "--json"))
    assert data["rollout"]["version_id"] == v2
    assert data["rollout"]["percentage"] == 50


def test_scheduled_versions_are_listed_cancelled_and_activated_early(url: str) -> None:
    """status lists scheduled versions with their time; activate --now brings one forward; cancel drops another."""
    ok(run(url, "deploy", V1, "--json"))
    later = str(time.time() + 3600)
    first = ok(run(url, "deploy", V2, "--at", later, "--json"))["version_id"]
    result = run(url, "deploy", V1, "--at", str(time.time() + 7200), "--json")
    second = ok(result)["version_id"]
    assert any(first in w for w in ok(result)["warnings"])
    scheduled = ok(run(url, "status", "--json"))["scheduled"]
    assert [s["version_id"] for s in scheduled] == [first, second]
    assert scheduled[0]["activation_time"].startswith(time.strftime("%Y", time.gmtime(float(later))))
    assert f"scheduled: {first} at " in run(url, "status").stdout
    data = ok(run(url, "activate", first, "--now", "--json"))
    assert (data["state"], data["percentage"], data["active_version"]) == ("active", 100.0, first)
    assert ok(run(url, "cancel", second, "--json")) == {"cancelled": second, "state": "cancelled"}
    assert ok(run(url, "status", "--json"))["scheduled"] == []


def test_a_deploy_while_a_schedule_is_pending_warns(url: str) -> None:
    """The warning names the pending version and the command that drops it (on stderr)."""
    ok(run(url, "deploy", V1, "--json"))
    pending = ok(run(url, "deploy", V2, "--at", str(time.time() + 3600), "--json"))["version_id"]
    result = run(url, "deploy", V1)
    assert result.exit_code == 0
    assert "warning:" in result.stderr
    assert f"rule-engine cancel {pending}" in " ".join(result.stderr.split())


def test_a_past_at_is_refused_and_nothing_is_staged(url: str) -> None:
    """--at in the past is a usage error naming --at; the store keeps no version."""
    result = run(url, "deploy", V1, "--at", "2001-01-01T00:00:00+00:00")
    assert result.exit_code == 2
    assert "--at" in result.stderr
    assert "in the past" in result.stderr
    status = run(url, "status", "--json")  # nothing committed: the refused write did not even create the store
    assert status.exit_code == 1
    assert "no store at" in status.stderr


def test_deploy_progress_deadline_is_stored_with_the_rollout(url: str) -> None:
    """--progress-deadline and --progress-deadline-abort reach the rollout; abort without a deadline is refused."""
    ok(run(url, "deploy", V1, "--json"))
    result = run(url, "deploy", V2, "--stages", "10,100", "--progress-deadline-abort")
    assert result.exit_code == 2
    data = ok(
        run(url, "deploy", V2, "--stages", "10,100", "--progress-deadline", "90", "--progress-deadline-abort", "--json")
    )
    assert (data["progress_deadline_secs"], data["progress_deadline_abort"]) == (90.0, True)
    rollout = ok(run(url, "status", "--json"))["rollout"]
    assert (rollout["progress_deadline_secs"], rollout["progress_deadline_abort"]) == (90.0, True)


def test_rollback_keeps_the_reason_and_records_the_origin_apart(url: str) -> None:
    """The reason is stored as given; the OS account and host go to the entry's origin."""
    _canary(url)
    ok(run(url, "rollback", "--reason", "bad numbers", "--json"))
    entries = [e for e in ok(run(url, "history", "--json"))["audit"] if e["action"] == "rollback"]
    assert {e["reason"] for e in entries} == {"bad numbers"}
    assert {e["origin"] for e in entries} == {os_account()}


def test_lifecycle_errors_are_one_line_with_commands(url: str) -> None:
    """Nothing to pause / undo: one error line, exit 1, hints in CLI terms."""
    result = run(url, "pause")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot pause: no rollout is in progress")
    ok(run(url, "deploy", V1, "--json"))
    result = run(url, "undo")
    assert result.exit_code == 1
    assert "rule-engine undo --to VERSION" in result.stderr
    assert "to=" not in result.stderr.replace("--to", "")


def test_experiment_reports_the_ab_test(url: str) -> None:
    """experiment --json gives both arms, the p-value and the verdict; without an A/B test it fails in one line."""
    ok(run(url, "deploy", V1, "--json"))
    assert run(url, "experiment").exit_code == 1
    ok(run(url, "deploy", V2, "--split-ratio", "0.5", "--json"))
    data = ok(run(url, "experiment", "--json"))
    assert {data["a"]["variant"], data["b"]["variant"]} == {"A", "B"}
    assert "p_value" in data
    assert "significant" in data
    human = run(url, "experiment").stdout
    assert "p-value" in human
    assert "rule-engine conclude WINNER" in human


def test_validate_verbose_lists_each_test_and_explains_a_failure(tmp_path: Path) -> None:
    """validate -v names every test PASS/FAIL; a failing one shows expected vs actual and the deciding rule."""
    bundle = json.loads(GATEWAY_V1.read_text())
    name = bundle["tests"][0]["name"]
    bundle["tests"][0]["expect"] = {"decision": "allow"}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    result = CliRunner().invoke(cli, ["validate", "-v", str(path)])
    assert result.exit_code == 1
    assert f"FAIL  {name}" in result.stdout
    assert "expected allow, got deny: decided by rule" in " ".join(result.stdout.split())
    assert result.stdout.count("PASS  ") == len(bundle["tests"]) - 1
    data = json.loads(CliRunner().invoke(cli, ["validate", "-v", "--json", str(path)]).stdout)
    first = data["bundles"][0]["test_results"][0]
    assert first["passed"] is False
    assert first["expected"]["decision"] == "allow"
    assert first["actual"]["decision"] == "deny"
    assert first["actual"]["rule_id"]


def test_evaluate_explain_names_every_rule(url: str) -> None:
    """--explain: the rules tried in order (matched / no match), the rest not tried or not applicable."""
    ok(run(url, "deploy", V1, "--json"))
    event = {"user_id": "u1", "agent_id": "api_gateway", "flow_id": "login", "country": "KP"}
    data = ok(run(url, "evaluate", json.dumps(event), "--explain", "--json"))
    outcomes = {step["rule_id"]: step["outcome"] for step in data["explain"]}
    assert len(outcomes) == len(json.loads(GATEWAY_V1.read_text())["rules"])
    if data["rule_id"] is not None:
        assert outcomes[data["rule_id"]] == "matched"
    assert set(outcomes.values()) <= {"matched", "no match", "error", "not tried", "not applicable"}
    assert "not applicable" in outcomes.values()


def test_status_watch_piped_prints_a_line_per_change(url: str) -> None:
    """Not a terminal: one line for an unchanged state over several looks; --json is refused with --watch."""
    _canary(url)
    result = run(url, "status", "--watch", "--count", "3", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert "stage 1/3 10%" in lines[0]
    assert run(url, "status", "--watch", "--json").exit_code == 2


def test_completion_offers_the_stored_version_ids(url: str, tmp_path: Path) -> None:
    """Version arguments complete from the store; a store that does not exist completes nothing and is not created."""
    _, candidate = _canary(url)
    ctx = cli.make_context("rule-engine", ["--store", url, "cancel"], resilient_parsing=True)
    items = complete_versions(ctx, cli.commands["cancel"].params[0], candidate[:10])
    assert candidate in [i.value for i in items]
    missing = tmp_path / "nothing" / "state.db"
    ctx = cli.make_context("rule-engine", ["--store", f"sqlite:///{missing}"], resilient_parsing=True)
    assert complete_versions(ctx, cli.commands["cancel"].params[0], "") == []
    assert not missing.exists()


def test_state_is_in_the_store(url: str) -> None:
    """What the CLI did is what a Python manager on the same store sees."""
    _, candidate = _canary(url)
    ok(run(url, "pause", "--json"))
    with DeploymentManager.open(url, follow=False) as manager:
        status = manager.get_rollout_status()
        assert status is not None
        assert status.paused
        assert status.version_id == candidate
