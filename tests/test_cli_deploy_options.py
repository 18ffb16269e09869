"""deploy's analysis settings (D6) and --replace-policy (D17), and the controller's analysis defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rule_engine import DeploymentManager
from rule_engine.cli import cli

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
V1, V2, FRAUD = (str(BUNDLES / name) for name in ("gateway-v1.json", "gateway-v2.json", "fraud-screen.json"))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", url, *args])


def ok(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if result.stdout.startswith("{") else result.stdout


def test_deploy_stores_the_analysis_settings_with_the_version(url: str) -> None:
    """--max-error-rate --min-evaluations --window --bake land on the version, for every controller to use."""
    ok(run(url, "deploy", V1))
    args = [
        "--stages",
        "10,100",
        "--max-error-rate",
        "0.2",
        "--min-evaluations",
        "50",
        "--window",
        "60",
        "--bake",
        "30",
    ]
    version = ok(run(url, "deploy", V2, *args, "--json"))["version_id"]
    with DeploymentManager.open(url, follow=False) as manager:
        analysis = manager.state.versions[version].analysis
    assert analysis is not None
    assert (
        analysis["max_error_rate"],
        analysis["min_evaluations"],
        analysis["window_secs"],
        analysis["bake_secs"],
    ) == (
        0.2,
        50,
        60.0,
        30.0,
    )


def test_without_analysis_options_the_version_keeps_none(url: str) -> None:
    """A version deployed without the options is judged by each controller's own settings."""
    version = ok(run(url, "deploy", V1, "--json"))["version_id"]
    with DeploymentManager.open(url, follow=False) as manager:
        assert manager.state.versions[version].analysis is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--max-error-rate", "1.5"], "--max-error-rate"),
        (["--window", "0"], "--window"),
        (["--bake", "1e9"], "--bake"),
        (["--min-evaluations", "-1"], "--min-evaluations"),
    ],
)
def test_out_of_range_analysis_settings_are_usage_errors_and_nothing_is_staged(
    url: str, args: list[str], fragment: str
) -> None:
    """A setting outside its documented range is refused naming the option; the store is not created."""
    result = run(url, "deploy", V1, *args)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert run(url, "history").exit_code == 1  # no store: nothing was committed


def test_another_policy_needs_replace_policy(url: str) -> None:
    """D17: deploying fraud-screen over gateway-access is one error line; --replace-policy deploys it."""
    ok(run(url, "deploy", V1))
    refused = run(url, "deploy", FRAUD)
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1
    assert "another policy" in refused.stderr
    assert ok(run(url, "deploy", FRAUD, "--replace-policy", "--json"))["version_id"].startswith("fraud-screen@")


def test_the_controller_takes_analysis_defaults(url: str) -> None:
    """controller --once --min-evaluations N runs with those thresholds (a bad value is a usage error)."""
    ok(run(url, "deploy", V1))
    ok(run(url, "controller", "--once", "--min-evaluations", "10", "--max-error-rate", "0.5"))
    assert run(url, "controller", "--once", "--max-error-rate", "2").exit_code == 2
