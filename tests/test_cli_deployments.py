"""The CLI on a store of several deployments: ``deployments``, the global ``--deployment`` (and its env var)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rule_engine.cli import cli

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
V1, V2, FRAUD = (str(BUNDLES / name) for name in ("gateway-v1.json", "gateway-v2.json", "fraud-screen.json"))
CASES = Path(__file__).parent / "cases"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def run(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["--store", url, *args], env=env)


def ok(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if result.stdout.startswith("{") else result.stdout


def _error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    return result.stderr


@pytest.fixture
def two(url: str) -> str:
    """A store holding gateway-access (v1 active, v2 in a canary) and fraud-screen (active)."""
    ok(run(url, "deploy", V1))
    ok(run(url, "--deployment", "gateway-access", "deploy", V2, "--stages", "10,100", "--stage-duration", "60"))
    ok(run(url, "--deployment", "fraud-screen", "deploy", FRAUD))
    return url


def test_deployments_lists_each_with_what_it_serves(two: str) -> None:
    """Name, active version, rollout and revision of each, in JSON and for people (the selected one marked)."""
    data = ok(run(two, "deployments", "--json"))
    rows = {d["name"]: d for d in data["deployments"]}
    assert sorted(rows) == ["fraud-screen", "gateway-access"]
    assert rows["gateway-access"]["rollout"] == "canary"
    assert rows["gateway-access"]["candidate_version_id"].startswith("gateway-access@2.0.0")
    assert rows["fraud-screen"]["active_version_id"].startswith("fraud-screen@")
    assert rows["fraud-screen"]["rollout"] is None
    assert (rows["gateway-access"]["revision"], rows["fraud-screen"]["revision"]) == (4, 2)
    text = " ".join(ok(run(two, "--deployment", "fraud-screen", "deployments")).split())
    assert text.startswith("* fraud-screen fraud-screen@")
    assert "gateway-access gateway-access@1.0.0" in text
    assert "canary of gateway-access@2.0.0" in text
    assert text.endswith("revision 4")


def test_a_command_needs_the_deployment_named_when_there_are_several(two: str) -> None:
    """Without --deployment: one error line naming them and the option; with it (or the env var) it works."""
    line = _error(run(two, "status"))
    assert "2 deployments ('fraud-screen', 'gateway-access')" in line
    assert "--deployment NAME" in line
    status = ok(run(two, "--deployment", "gateway-access", "status", "--json"))
    assert status["rollout"]["version_id"].startswith("gateway-access@2.0.0")
    assert status["deployment"] == "gateway-access"
    assert "(deployment fraud-screen)" in ok(run(two, "--deployment", "fraud-screen", "status")).splitlines()[0]
    history = ok(run(two, "history", "--json", env={"RULE_ENGINE_DEPLOYMENT": "fraud-screen"}))
    assert {v["version_id"].split("@")[0] for v in history["versions"]} == {"fraud-screen"}
    assert "no deployment 'nope'" in _error(run(two, "--deployment", "nope", "status"))
    assert run(two, "--deployment", "no spaces", "status").exit_code == 2


def test_rollback_and_audit_verify_act_on_the_named_deployment_only(two: str) -> None:
    """Rolling back gateway-access leaves fraud-screen's revision and audit as they were."""
    before = ok(run(two, "--deployment", "fraud-screen", "audit", "verify", "--json"))
    ok(run(two, "--deployment", "gateway-access", "rollback", "--by", "oncall"))
    rows = {d["name"]: d for d in ok(run(two, "deployments", "--json"))["deployments"]}
    assert rows["gateway-access"]["rollout"] is None
    assert rows["fraud-screen"]["revision"] == 2
    assert ok(run(two, "--deployment", "fraud-screen", "audit", "verify", "--json")) == before
    assert ok(run(two, "--deployment", "gateway-access", "audit", "verify", "--json"))["ok"] is True


def test_the_controller_ticks_every_deployment_or_the_named_one(two: str) -> None:
    """controller --once: one JSON line per deployment; with --deployment only that one."""
    every = run(two, "controller", "--once", "--json")
    assert every.exit_code == 0, every.output
    assert [json.loads(line)["deployment"] for line in every.stdout.splitlines()] == ["fraud-screen", "gateway-access"]
    named = run(two, "--deployment", "fraud-screen", "controller", "--once", "--json")
    assert [json.loads(line)["deployment"] for line in named.stdout.splitlines()] == ["fraud-screen"]


def test_a_cross_policy_deploy_is_refused_naming_both_ways_out(url: str) -> None:
    """fraud-screen into a store holding only gateway-access: --deployment or --replace-policy, in CLI words."""
    ok(run(url, "deploy", V1))
    line = _error(run(url, "deploy", FRAUD))
    assert "'rule-engine --deployment fraud-screen deploy ...'" in line
    assert "--replace-policy" in line
    assert "replace_policy" not in line
    assert [d["name"] for d in ok(run(url, "deployments", "--json"))["deployments"]] == ["gateway-access"]


def test_an_old_store_file_works_from_the_cli(tmp_path: Path) -> None:
    """The schema 2 file written by commit 431161c: audit verify passes, it lists as gateway-access, status works."""
    path = tmp_path / "old.db"
    shutil.copyfile(CASES / "store_schema2.db", path)
    os.chmod(path, 0o600)
    url = f"sqlite:///{path}"
    held = json.loads((CASES / "store_schema2.json").read_text())
    verdict = ok(run(url, "audit", "verify", "--json"))
    assert (verdict["ok"], verdict["head"]) == (True, held["audit_head"])
    assert [d["name"] for d in ok(run(url, "deployments", "--json"))["deployments"]] == ["gateway-access"]
    assert ok(run(url, "status", "--json"))["rollout"]["version_id"] == held["rollout"]["candidate"]


def test_deployments_on_a_new_store_says_there_is_none(url: str) -> None:
    """No store yet: the one-line "no store" error; an empty one: no deployment yet."""
    assert "no store at" in _error(run(url, "deployments"))


def test_completion_offers_deployment_names_and_the_named_ones_versions(two: str) -> None:
    """--deployment completes the store's names; version ids are those of the deployment given on the line."""
    from rule_engine.cli.completion import complete_deployments, complete_versions

    ctx = cli.make_context("rule-engine", ["--store", two], resilient_parsing=True)
    option = next(p for p in cli.params if p.name == "deployment")
    assert [i.value for i in complete_deployments(ctx, option, "")] == ["fraud-screen", "gateway-access"]
    assert [i.value for i in complete_deployments(ctx, option, "fr")] == ["fraud-screen"]
    ctx = cli.make_context(
        "rule-engine", ["--store", two, "--deployment", "fraud-screen", "cancel"], resilient_parsing=True
    )
    versions = [i.value for i in complete_versions(ctx, cli.commands["cancel"].params[0], "")]
    assert versions
    assert all(v.startswith("fraud-screen@") for v in versions)


def test_store_migrate_names_the_old_files_deployment(tmp_path: Path) -> None:
    """store migrate on the schema 2 file: 2 -> 3, then nothing to do."""
    path = tmp_path / "old.db"
    shutil.copyfile(CASES / "store_schema2.db", path)
    os.chmod(path, 0o600)
    url = f"sqlite:///{path}"
    assert ok(run(url, "store", "migrate")).strip() == f"{url}: schema 2 -> 3"
    assert ok(run(url, "store", "migrate", "--json"))["changed"] is False


def test_a_mirror_copies_the_named_deployment(two: str, tmp_path: Path) -> None:
    """--deployment NAME mirror: the local file holds that deployment, under its name; unnamed, several refuse."""
    local = f"sqlite:///{tmp_path / 'mirror.db'}"
    copied = ok(run(two, "--deployment", "fraud-screen", "mirror", "--from", two, "--to", local, "--once", "--json"))
    assert copied["copied"] is True
    rows = ok(run(local, "deployments", "--json"))["deployments"]
    assert [(d["name"], d["revision"]) for d in rows] == [("fraud-screen", 2)]
    assert ok(run(local, "audit", "verify", "--json"))["ok"] is True
    assert "2 deployments" in _error(
        run(two, "mirror", "--from", two, "--to", f"sqlite:///{tmp_path / 'm2.db'}", "--once")
    )


def test_evaluate_and_fleet_answer_for_the_named_deployment(two: str) -> None:
    """evaluate decides on the named deployment's serving version; fleet lists that deployment's instances."""
    event = json.dumps({"amount": 10, "user_id": "u-1"})
    fraud = ok(run(two, "--deployment", "fraud-screen", "evaluate", event, "--json"))
    assert fraud["version_id"].startswith("fraud-screen@")
    gateway = ok(run(two, "--deployment", "gateway-access", "evaluate", event, "--json"))
    assert gateway["version_id"].startswith("gateway-access@")
    assert ok(run(two, "--deployment", "fraud-screen", "fleet", "--json"))["instances"] == []
