"""The ``rule-engine`` CLI: every command's happy path, its ``--json`` shape, and one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner, Result
from freezegun import freeze_time

from rule_engine import ConflictError, DeploymentManager
from rule_engine.cli import CliContext, cli
from rule_engine.cli._common import os_account

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
V1, V2, V3 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2", "v3-broken"))
MALFORMED = ROOT / "tests" / "cases" / "malformed"
SCRIPT = Path(sys.executable).parent / "rule-engine"
LOGIN_IR = '{"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "IR"}, "user": {"id": "u-1"}}'


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A fresh SQLite store in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def run(store_url: str) -> Any:
    """Invoke the CLI in-process on the test's store."""

    def invoke(*args: str, obj: CliContext | None = None) -> Result:
        return CliRunner().invoke(cli, ["--store", store_url, *args], obj=obj)

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, fragment: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


# --- happy paths -----------------------------------------------------------------------------------


def test_validate_accepts_every_example_bundle_and_runs_their_tests(run: Any) -> None:
    """validate reports each example bundle OK with its number of tests passed."""
    paths = sorted(str(p) for p in BUNDLES.glob("*.json"))
    data = ok_json(run("validate", *paths, "--json"))
    assert data["ok"] is True
    assert [b["path"] for b in data["bundles"]] == paths
    assert all(b["ok"] and b["problems"] == [] and b["tests"] > 0 for b in data["bundles"])
    text = run("validate", V1)
    assert text.exit_code == 0
    assert text.stdout.startswith("OK ")
    assert "8 tests passed" in text.stdout


def test_validate_lists_every_problem_on_stdout_and_one_line_on_stderr(run: Any) -> None:
    """An invalid bundle among valid ones: all its problems printed, exit 1, one error line."""
    bad = str(MALFORMED / "09-unknown-operator-gtt.json")
    result = run("validate", V1, bad)
    assert_one_line_error(result, "1 of 2 bundles invalid")
    assert "unknown operator 'gtt'" in result.stderr
    assert "FAIL" in result.stdout
    assert "OK" in result.stdout


def test_deploy_blue_green_json_and_status_json(run: Any) -> None:
    """deploy --json gives version_id and state; status --json shows it active with no rollout."""
    deployed = ok_json(run("deploy", V1, "--json", "--by", "alice"))
    assert deployed["state"] == "active"
    assert deployed["version_id"].startswith("gateway-access@1.0.0+")
    assert deployed["percentage"] == 100.0
    status = ok_json(run("status", "--json"))
    assert status["active_version"] == deployed["version_id"]
    assert status["rollout"] is None
    assert deployed["version_id"] in status["health"]
    history = ok_json(run("history", "--json"))
    assert [v["deployed_by"] for v in history["versions"]] == ["alice"]
    assert [(e["action"], e["to_state"]) for e in history["audit"]] == [("prepare", "staged"), ("activate", "active")]


def test_canary_status_shows_rollout_shape_and_a_progress_bar(run: Any) -> None:
    """A canary deploy: status --json has the rollout fields; the text form shows a bar and why it holds."""
    v1 = ok_json(run("deploy", V1, "--json"))["version_id"]
    v2 = ok_json(run("deploy", V2, "--stages", "10,50,100", "--stage-duration", "600", "--json"))
    assert v2["state"] == "rolling_out"
    assert v2["strategy"] == {"kind": "canary", "stages": [10, 50, 100], "stage_duration_secs": 600.0}
    status = ok_json(run("status", "--json"))
    assert status["active_version"] == v1
    rollout = status["rollout"]
    assert {k: rollout[k] for k in ("version_id", "strategy", "state", "percentage")} == {
        "version_id": v2["version_id"],
        "strategy": "canary",
        "state": "rolling_out",
        "percentage": 10.0,
    }
    assert set(status["health"]) == {v1, v2["version_id"]}
    text = run("status").stdout
    assert "[###---------------------------] 10% of traffic" in text
    assert "holding: no verdict yet" in text


def test_advance_holds_then_promote_and_rollback(run: Any) -> None:
    """advance holds a stage that is not due; promote completes the canary; rollback returns to v1."""
    v1 = ok_json(run("deploy", V1, "--json"))["version_id"]
    v2 = ok_json(run("deploy", V2, "--strategy", "canary", "--json"))["version_id"]
    held = ok_json(run("advance", "--json"))
    assert held["advanced"] is False
    assert held["rollout"]["percentage"] == 10.0
    assert "not advanced" in run("advance").stdout
    promoted = ok_json(run("promote", "--json", "--by", "bob"))
    assert promoted["version_id"] == v2
    assert ok_json(run("status", "--json"))["active_version"] == v2
    rolled = ok_json(run("rollback", "--reason", "bad numbers", "--json"))
    assert rolled == {"rolled_back": v2, "active_version": v1}
    history = ok_json(run("history", "--json"))
    states = {v["version_id"]: v["state"] for v in history["versions"]}
    assert states == {v1: "active", v2: "rolled_back"}
    assert any(e["actor"] == "bob" and e["action"] == "promote" for e in history["audit"])
    # the audit keeps the reason as given, with the OS account and host that ran the command
    assert any(e["reason"] == "bad numbers" and e["origin"] == os_account() for e in history["audit"])


def test_ab_test_deploy_and_conclude_winner(run: Any) -> None:
    """An A/B test splits traffic; conclude WINNER makes the winner serve everything."""
    v1 = ok_json(run("deploy", V1, "--json"))["version_id"]
    b = ok_json(run("deploy", V2, "--split-ratio", "0.7", "--test-duration", "60", "--json"))
    assert b["strategy"]["kind"] == "ab-test"
    assert ok_json(run("status", "--json"))["rollout"]["percentage"] == pytest.approx(30.0)
    assert ok_json(run("conclude", v1, "--json")) == {"winner": v1, "active_version": v1}
    assert ok_json(run("status", "--json"))["rollout"] is None


def test_scheduled_deploy_waits_for_the_controller(run: Any) -> None:
    """A scheduled deploy only prepares; controller --once activates it when due (a past --at is refused)."""
    run("deploy", V1)
    with freeze_time(datetime.now(UTC)) as clock:
        due = str(time.time() + 60)
        scheduled = ok_json(run("deploy", V2, "--strategy", "scheduled", "--at", due, "--json"))
        assert scheduled["state"] == "staged"
        clock.tick(61)
        ticked = run("controller", "--once", "--json")
    assert ticked.exit_code == 0, ticked.output
    assert json.loads(ticked.stdout.splitlines()[0])["actions"] == [f"activated scheduled {scheduled['version_id']}"]
    assert ok_json(run("status", "--json"))["active_version"] == scheduled["version_id"]


def test_deploy_at_accepts_iso_8601_with_timezone(run: Any) -> None:
    """--at takes ISO 8601 with a timezone and stores it as the activation time."""
    data = ok_json(run("deploy", V1, "--at", "2030-01-01T09:00:00+01:00", "--json"))
    assert data["strategy"] == {"kind": "scheduled", "activation_time": 1893484800.0}


def test_diff_between_a_bundle_file_and_a_stored_version(run: Any) -> None:
    """diff names rules added, removed and changed by id, for files and stored versions alike."""
    v1 = ok_json(run("deploy", V1, "--json"))["version_id"]
    data = ok_json(run("diff", v1, V2, "--json"))
    assert data["added"] == ["challenge-high-risk"]
    assert data["removed"] == ["challenge-very-high-risk"]
    assert {c["rule_id"]: c["fields"] for c in data["changed"]} == {
        "deny-blocked-country": ["when"],
        "throttle-bots": ["then"],
    }
    assert data["from"]["ref"] == v1
    text = run("diff", V2, V3).stdout
    assert "+ challenge-stale-session" in text
    assert "1 added, 0 removed, 0 changed" in text


def test_evaluate_inline_and_from_file(run: Any, tmp_path: Path) -> None:
    """evaluate prints the decision, the rule and the version, from inline JSON or @file."""
    v2 = ok_json(run("deploy", V2, "--json"))["version_id"]
    data = ok_json(run("evaluate", LOGIN_IR, "--key", "u-1", "--json"))
    assert (data["decision"], data["rule_id"], data["version_id"]) == ("deny", "deny-blocked-country", v2)
    event_file = tmp_path / "event.json"
    event_file.write_text(LOGIN_IR)
    text = run("evaluate", f"@{event_file}").stdout
    assert "decision: deny" in text
    assert "rule:     deny-blocked-country" in text
    assert f"version:  {v2}" in text


def test_schema_prints_the_bundle_json_schema(run: Any) -> None:
    """schema prints a JSON Schema document."""
    pytest.importorskip("rule_engine.bundle.schema")
    data = ok_json(run("schema"))
    assert "$schema" in data


def test_cli_restores_the_host_structlog_configuration(run: Any) -> None:
    """Running the CLI in-process leaves structlog configured as it was (the library never configures it)."""
    before = structlog.get_config()
    run("status")
    assert structlog.get_config() == before


# --- errors: one line on stderr, non-zero exit, never a traceback ------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment", "code"),
    [
        (["deploy", str(MALFORMED / "09-unknown-operator-gtt.json")], "invalid bundle: rules[1].when.all[1].op", 1),
        (["deploy", str(MALFORMED / "44-test-expectation-fails.json")], "bundle tests failed", 1),
        (["deploy", "/nonexistent/bundle.json"], "No such file", 1),
        (["rollback"], "cannot roll back: nothing is active", 1),
        (["advance"], "no rollout is in progress", 1),
        (["promote"], "no rollout is in progress", 1),
        (["conclude", "nope@1"], "no rollout is in progress", 1),
        (["diff", "nope@1", V1], "no store at", 1),  # a read never creates the store (D10)
        (["evaluate", "{not json"], "event is not valid JSON", 1),
        (["evaluate", "[1, 2]"], "event must be a JSON object", 1),
        (["evaluate", "@/nonexistent/event.json"], "cannot read event file", 1),
        (["deploy", V1, "--stages", "10,20"], "canary stages must end at 100", 2),
        (["deploy", V1, "--stages", "ten"], "expected percentages", 2),
        (["deploy", V1, "--at", "2030-01-01T09:00:00"], "has no timezone", 2),
        (["deploy", V1, "--strategy", "blue-green", "--stages", "50,100"], "do(es) not apply", 2),
        (["deploy", V1, "--bogus"], "No such option", 2),
        (["frobnicate"], "No such command", 2),
        (["validate"], "Missing argument", 2),
    ],
)
def test_every_error_is_one_line(run: Any, args: list[str], fragment: str, code: int) -> None:
    """Each failure ends with exactly one 'error:' line on stderr and a non-zero exit status."""
    assert_one_line_error(run(*args), fragment, code)


def test_unknown_store_url_is_one_line() -> None:
    """An unsupported store URL is refused in one line."""
    result = CliRunner().invoke(cli, ["--store", "mongodb://db/x", "status"])
    assert_one_line_error(result, "unsupported store URL 'mongodb://db/x'")


def test_deploy_during_a_rollout_says_the_version_is_left_staged(run: Any) -> None:
    """A second rollout is refused in one line naming the version left staged."""
    run("deploy", V1)
    run("deploy", V2, "--strategy", "canary")
    result = run("deploy", V3, "--strategy", "canary")
    assert_one_line_error(result, "is in progress")
    assert "is prepared and left staged" in result.stderr


def test_a_conflict_is_one_line(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conflict with another writer surfaces as one line."""
    manager = DeploymentManager()

    def conflicted(**_: Any) -> str:
        raise ConflictError("another process changed the deployment state (revision 7); try again")

    monkeypatch.setattr(manager, "promote", conflicted)
    result = run("promote", obj=CliContext(manager=manager))
    assert_one_line_error(result, "another process changed the deployment state")


def test_an_unexpected_exception_is_one_line_with_a_debug_hint(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug becomes one line pointing at RULE_ENGINE_DEBUG, which then shows the traceback."""
    manager = DeploymentManager()
    monkeypatch.setattr(manager, "get_rollout_status", lambda: 1 / 0)
    monkeypatch.delenv("RULE_ENGINE_DEBUG", raising=False)
    result = run("status", obj=CliContext(manager=manager))
    assert_one_line_error(result, "unexpected ZeroDivisionError: division by zero (re-run with RULE_ENGINE_DEBUG=1")
    monkeypatch.setenv("RULE_ENGINE_DEBUG", "1")
    debug = run("status", obj=CliContext(manager=manager))
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr


# --- real processes ------------------------------------------------------------------------------


def _script(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_cli_deploy_is_seen_by_another_process(store_url: str) -> None:
    """A deploy by the rule-engine script is what a second Python process opening the store serves."""
    deployed = _script("deploy", V1, "--json", env={"RULE_ENGINE_STORE": store_url})
    assert deployed.returncode == 0, deployed.stderr
    version_id = json.loads(deployed.stdout)["version_id"]
    probe = (
        "import sys; from rule_engine import DeploymentManager, RuleEngine\n"
        "m = DeploymentManager.open(sys.argv[1], follow=False)\n"
        "d = RuleEngine(m).evaluate({'agent_id': 'api_gateway', 'flow_id': 'login', 'geo': {'country': 'KP'}})\n"
        "print(m.get_active_version_id(), d.decision, d.version_id); m.close()\n"
    )
    seen = subprocess.run(
        [sys.executable, "-c", probe, store_url], capture_output=True, text=True, timeout=30, check=False
    )
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split() == [version_id, "deny", version_id]


def test_the_script_reports_errors_in_one_line_and_exit_status() -> None:
    """The installed script turns an unknown store URL into one line and exit 1."""
    result = _script("--store", "nosuch://x", "history")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: unsupported store URL 'nosuch://x' (scheme 'nosuch'); use sqlite:///path/to/state.db, postgresql://user@host/db or memory://"
    ]
    assert result.stdout == ""


def test_controller_stops_cleanly_on_sigterm(store_url: str) -> None:
    """controller ticks until SIGTERM, then says it stopped and exits 0."""
    proc = subprocess.Popen(
        [str(SCRIPT), "--store", store_url, "controller", "--interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the controller runs (bounded by the timeout below)
        assert first.startswith("controller on ")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "controller stopped after" in out
    assert err == ""


def test_packaged_bundles_are_identical_to_the_source_bundles() -> None:
    """rule_engine/bundles/ (package data, used by the demo when installed) mirrors bundles/."""
    packaged = ROOT / "rule_engine" / "bundles"
    sources = sorted(p.name for p in BUNDLES.glob("*.json"))
    assert sorted(p.name for p in packaged.glob("*.json")) == sources
    for name in sources:
        assert (packaged / name).read_bytes() == (BUNDLES / name).read_bytes(), name


def test_the_store_defaults_to_env_then_the_local_sqlite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --store: $RULE_ENGINE_STORE if set, else sqlite:///.rule-engine/state.db in the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RULE_ENGINE_STORE", raising=False)
    deployed = ok_json(CliRunner().invoke(cli, ["deploy", V1, "--json"]))
    assert deployed["store"] == "sqlite:///.rule-engine/state.db"
    assert (tmp_path / ".rule-engine" / "state.db").is_file()
    monkeypatch.setenv("RULE_ENGINE_STORE", f"sqlite:///{tmp_path / 'other.db'}")
    missing = CliRunner().invoke(cli, ["status", "--json"])  # a read names the env's store, and never creates it
    assert missing.exit_code == 1
    assert "other.db" in missing.stderr
    assert not (tmp_path / "other.db").exists()
