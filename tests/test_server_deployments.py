"""The HTTP API over a store of several deployments: ``?deployment=NAME`` and ``GET /api/v1/deployments``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from rule_engine import DeploymentManager
from rule_engine.server.app import ServerSettings, create_app
from tests._support_deployment import BUNDLES, GATEWAY_V1, GATEWAY_V2
from tests._support_server import AUTH, bundle_json, tokens

FRAUD = BUNDLES / "fraud-screen.json"


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[dict[str, DeploymentManager]]:
    """gateway-access (v1 active) and fraud-screen (active) in one SQLite store, a manager on each."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    gateway = DeploymentManager.open(url, deployment="gateway-access", follow=False)
    fraud = DeploymentManager.open(url, deployment="fraud-screen", follow=False)
    gateway.activate_deployment(gateway.prepare_deployment(GATEWAY_V1))
    fraud.activate_deployment(fraud.prepare_deployment(FRAUD))
    yield {"gateway-access": gateway, "fraud-screen": fraud}
    gateway.close()
    fraud.close()


@pytest.fixture
def client(managers: dict[str, DeploymentManager]) -> TestClient:
    return TestClient(create_app(managers, ServerSettings(tokens=tokens(), store_url="sqlite:///state.db")))


def test_deployments_lists_each_with_its_rollout_and_revision(client: TestClient) -> None:
    """The same fields as ``rule-engine deployments --json`` (plus ``active_version``)."""
    rows = {d["name"]: d for d in client.get("/api/v1/deployments").json()["deployments"]}
    assert sorted(rows) == ["fraud-screen", "gateway-access"]
    assert rows["fraud-screen"]["policy"] == "fraud-screen"
    assert rows["gateway-access"]["revision"] == 2
    assert rows["gateway-access"]["rollout"] is None
    assert rows["gateway-access"]["active_version"] == rows["gateway-access"]["active_version_id"]


def test_every_read_and_write_takes_the_deployment(client: TestClient, managers: dict[str, DeploymentManager]) -> None:
    """A canary deployed to one, rolled back there, while the other's status and audit never move."""
    fraud_before = client.get("/api/v1/status?deployment=fraud-screen").json()
    answer = client.post(
        "/api/v1/deploy?deployment=gateway-access",
        json={"bundle": bundle_json(GATEWAY_V2), "strategy": "canary", "stages": [10, 100], "stage_duration": 60},
        headers=AUTH,
    )
    assert answer.status_code == 201, answer.text
    status = client.get("/api/v1/status?deployment=gateway-access").json()
    assert status["rollout"]["version_id"] == answer.json()["version_id"]
    decided = client.post("/api/v1/evaluate?deployment=fraud-screen", json={"event": {"amount": 1}, "key": "k"}).json()
    assert decided["version_id"] == managers["fraud-screen"].get_active_version_id()
    rolled = client.post("/api/v1/rollback?deployment=gateway-access", json={"reason": "test"}, headers=AUTH)
    assert rolled.status_code == 200, rolled.text
    assert client.get("/api/v1/status?deployment=gateway-access").json()["rollout"] is None
    assert client.get("/api/v1/status?deployment=fraud-screen").json()["versions"] == fraud_before["versions"]
    audit = client.get("/api/v1/audit?deployment=fraud-screen").json()["audit"]
    assert {e["version_id"].split("@")[0] for e in audit} == {"fraud-screen"}
    history = client.get("/api/v1/history?deployment=gateway-access").json()
    assert {v["version_id"].split("@")[0] for v in history["versions"]} == {"gateway-access"}


def test_without_a_name_several_deployments_are_a_problem_naming_them(client: TestClient) -> None:
    """No ?deployment= on a server of several: 400 listing them; an unknown one: 404."""
    answer = client.get("/api/v1/status")
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["deployments"] == ["fraud-screen", "gateway-access"]
    assert "?deployment=NAME" in answer.json()["detail"]
    assert client.get("/api/v1/status?deployment=nope").status_code == 404


def test_a_server_of_one_deployment_needs_no_name(managers: dict[str, DeploymentManager]) -> None:
    """One deployment: no ?deployment= needed, and ``default`` still names it (as before deployments had names)."""
    one = TestClient(create_app({"fraud-screen": managers["fraud-screen"]}, ServerSettings(tokens=tokens())))
    active = managers["fraud-screen"].get_active_version_id()
    for query in ("", "?deployment=default", "?deployment=fraud-screen"):
        assert one.get(f"/api/v1/status{query}").json()["active_version"] == active
