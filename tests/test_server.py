"""The HTTP API of ``rule-engine serve``: reads, writes behind tokens, evaluation, probes, problems."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from rule_engine import ABTest, DeploymentManager, RuleEngine, Scheduled
from rule_engine.cli import cli
from rule_engine.server.app import ServerSettings, create_app
from rule_engine.server.operations import OPERATIONS
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2, mini_bundle
from tests._support_server import AUTH, TOKEN, ManualClock, bundle_json, canary_in_progress, make_app

WRITES = ["/api/v1/deploy", *(f"/api/v1/{op.name}" for op in OPERATIONS)]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def manager(clock: ManualClock) -> Iterator[DeploymentManager]:
    with DeploymentManager(clock=clock) as m:
        yield m


@pytest.fixture
def client(manager: DeploymentManager, clock: ManualClock) -> TestClient:
    return TestClient(make_app(manager, clock), raise_server_exceptions=False)


def deploy(client: TestClient, body: dict[str, Any] | None = None, **options: Any) -> Any:
    response = client.post("/api/v1/deploy", json={"bundle": bundle_json(), **(body or {}), **options}, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


def assert_problem(response: Any, status: int, fragment: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body)
    assert body["status"] == status
    assert fragment in body["detail"]
    assert "Traceback" not in response.text
    return body


# --- probes ----------------------------------------------------------------------------------------


def test_healthz_answers_while_the_process_lives(client: TestClient) -> None:
    """Liveness does not depend on what serves."""
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_not_ready_before_any_version_serves(client: TestClient) -> None:
    """Readiness waits for an active version (OPA's /health?bundles)."""
    assert_problem(client.get("/readyz"), 503, "no version is active")


def test_readyz_is_ready_once_a_version_serves(client: TestClient) -> None:
    """After a deploy, the probe says ready and names the version and revision."""
    version = deploy(client)["version_id"]
    body = client.get("/readyz").json()
    assert body["ready"] is True
    assert body["deployments"]["default"]["active_version"] == version


def test_readyz_is_not_ready_while_the_manager_is_stale(client: TestClient, manager: DeploymentManager) -> None:
    """A manager that cannot read its store may serve an old state: not ready."""
    deploy(client)
    manager._follower.stale_reason = "StoreError: database is locked"  # what the follower sets on a store failure
    assert_problem(client.get("/readyz"), 503, "stale")


# --- authentication ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WRITES)
def test_every_write_is_refused_without_a_token(client: TestClient, path: str) -> None:
    """No Authorization header: 401 problem with a Bearer challenge, and nothing changes."""
    response = client.post(path, json={"bundle": bundle_json()} if path.endswith("deploy") else {})
    assert_problem(response, 401, "Bearer")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/v1/status").json()["active_version"] is None


@pytest.mark.parametrize("header", ["Bearer wrong", "Basic " + TOKEN, "Bearer", TOKEN, "Bearer " + "x" * 10_000])
def test_a_wrong_token_or_scheme_is_refused(client: TestClient, header: str) -> None:
    """Only the exact token under the Bearer scheme is accepted."""
    response = client.post("/api/v1/deploy", json={"bundle": bundle_json()}, headers={"Authorization": header})
    assert_problem(response, 401)


def test_a_server_without_tokens_refuses_every_write(manager: DeploymentManager) -> None:
    """Secure by default: no tokens file means no writes, and the problem says how to add one."""
    client = TestClient(create_app(manager, ServerSettings(tokens=None)))
    response = client.post("/api/v1/deploy", json={"bundle": bundle_json()}, headers=AUTH)
    assert_problem(response, 401, "--tokens")


def test_the_audit_actor_is_the_token_name(client: TestClient) -> None:
    """A write with alice's token is audited as alice, and the version says alice deployed it."""
    version = deploy(client)["version_id"]
    audit = client.get("/api/v1/audit").json()["audit"]
    assert [e["actor"] for e in audit] == ["alice", "alice"]
    versions = client.get("/api/v1/versions").json()["versions"]
    assert versions[0]["version_id"] == version
    assert versions[0]["deployed_by"] == "alice"


def test_reads_need_a_token_with_read_auth(manager: DeploymentManager) -> None:
    """With read_auth, reads and evaluation are refused without a token and answered with one."""
    client = TestClient(make_app(manager, read_auth=True))
    for path in ("/api/v1/status", "/api/v1/history", "/api/v1/versions", "/api/v1/audit", "/api/v1/deployments"):
        assert_problem(client.get(path), 401)
        assert client.get(path, headers=AUTH).status_code == 200
    assert_problem(client.post("/api/v1/evaluate", json={"event": {}}), 401)
    assert client.get("/healthz").status_code == 200  # probes stay open


# --- reads -------------------------------------------------------------------------------------------


def test_status_is_the_json_of_status_cli(tmp_path: Path) -> None:
    """GET /api/v1/status and 'rule-engine status --json' print the same document (one source)."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with DeploymentManager.open(url, follow=False) as manager:
        client = TestClient(make_app(manager, store_url=url))
        deploy(client)
        client.post(
            "/api/v1/deploy", json={"bundle": bundle_json(GATEWAY_V2), "stages": [10, 100]}, headers=AUTH
        ).raise_for_status()
        api = client.get("/api/v1/status").json()
    result = CliRunner().invoke(cli, ["--store", url, "status", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    for version_health in (*api["health"].values(), *printed["health"].values()):
        version_health.pop("last_check")  # when this process last judged it
    assert api == printed


def test_history_is_the_json_of_history_cli(tmp_path: Path) -> None:
    """GET /api/v1/history and 'rule-engine history --json' agree (versions and audit)."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with DeploymentManager.open(url, follow=False) as manager:
        client = TestClient(make_app(manager, store_url=url))
        deploy(client)
        api = client.get("/api/v1/history?limit=10").json()
    printed = json.loads(CliRunner().invoke(cli, ["--store", url, "history", "--json", "--limit", "10"]).output)
    assert api["audit"] == printed["audit"]
    assert [v["version_id"] for v in api["versions"]] == [v["version_id"] for v in printed["versions"]]


def test_history_limit_is_bounded(client: TestClient) -> None:
    """A limit above the bound is a 422 problem, not an unbounded read."""
    assert_problem(client.get("/api/v1/history?limit=1000000"), 422)
    assert_problem(client.get("/api/v1/history?limit=0"), 422)


def test_audit_of_one_version(client: TestClient) -> None:
    """?version_id= keeps the entries of that version only."""
    v1 = deploy(client)["version_id"]
    deploy(client, {"bundle": bundle_json(GATEWAY_V2)})
    entries = client.get("/api/v1/audit", params={"version_id": v1}).json()["audit"]
    assert entries
    assert {e["version_id"] for e in entries} == {v1}


def test_experiment_report_during_an_ab_test(client: TestClient) -> None:
    """The A/B report names both variants; without an A/B test it is a 409 problem."""
    assert_problem(client.get("/api/v1/experiment"), 409, "no A/B test")
    v1 = deploy(client)["version_id"]
    v2 = deploy(client, {"bundle": bundle_json(GATEWAY_V2), "strategy": "ab-test", "split_ratio": 0.5})["version_id"]
    report = client.get("/api/v1/experiment").json()
    assert (report["a"]["version_id"], report["b"]["version_id"]) == (v1, v2)


def test_deployments_lists_every_managed_deployment(clock: ManualClock) -> None:
    """Several managers by name; ?deployment= picks one; an unknown name is a 404 problem."""
    with DeploymentManager(clock=clock) as a, DeploymentManager(clock=clock) as b:
        client = TestClient(make_app_many({"payments": a, "search": b}))
        names = [d["name"] for d in client.get("/api/v1/deployments").json()["deployments"]]
        assert names == ["payments", "search"]
        response = client.post("/api/v1/deploy?deployment=search", json={"bundle": bundle_json()}, headers=AUTH)
        assert response.status_code == 201
        assert b.get_active_version_id() is not None
        assert a.get_active_version_id() is None
        assert_problem(client.get("/api/v1/status?deployment=nope"), 404, "nope")


def make_app_many(managers: dict[str, DeploymentManager]) -> Any:
    from tests._support_server import tokens

    return create_app(managers, ServerSettings(tokens=tokens()))


# --- writes ------------------------------------------------------------------------------------------


def test_deploy_answers_the_json_of_deploy_cli(client: TestClient) -> None:
    """The deploy answer has the fields of 'deploy --json'."""
    body = deploy(client)
    assert set(body) == {"version_id", "state", "strategy", "percentage", "store"}
    assert (body["state"], body["percentage"], body["strategy"]) == ("active", 100.0, {"kind": "blue-green"})


def test_an_invalid_bundle_is_refused_and_nothing_changes(client: TestClient) -> None:
    """A bundle whose own test fails is a 422 problem listing problems; what serves is unchanged."""
    v1 = deploy(client)["version_id"]
    response = client.post("/api/v1/deploy", json={"bundle": mini_bundle(expect="allow")}, headers=AUTH)
    problem = assert_problem(response, 422)
    assert problem["problems"]
    broken = client.post("/api/v1/deploy", json={"bundle": {"bundle_id": "x"}}, headers=AUTH)
    assert_problem(broken, 422)
    assert client.get("/api/v1/status").json()["active_version"] == v1


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"strategy": "blue-green", "stages": [10, 100]}, "do(es) not apply"),
        ({"stages": [50, 10]}, ""),
        ({"strategy": "scheduled"}, "needs 'at'"),
        ({"at": "tomorrow"}, "ISO 8601"),
        ({"at": "2030-01-01T09:00:00"}, "timezone"),
    ],
)
def test_bad_strategy_options_are_refused(client: TestClient, options: dict[str, Any], fragment: str) -> None:
    """Strategy options are validated as the CLI validates them (422 problem)."""
    assert_problem(
        client.post("/api/v1/deploy", json={"bundle": bundle_json(), **options}, headers=AUTH), 422, fragment
    )


def test_a_canary_advances_and_is_promoted_over_http(clock: ManualClock) -> None:
    """advance waits for the stage to last; promote finishes the rollout; both audited as alice."""
    manager = canary_in_progress(clock)
    client = TestClient(make_app(manager, clock))
    assert client.post("/api/v1/advance", headers=AUTH).json()["advanced"] is False
    clock.advance(61)
    moved = client.post("/api/v1/advance", headers=AUTH).json()
    assert moved["advanced"] is True
    assert moved["rollout"]["percentage"] == 50.0
    promoted = client.post("/api/v1/promote", headers=AUTH).json()
    assert promoted["active_version"] == manager.get_active_version_id() == promoted["version_id"]
    assert [e.actor for e in manager.audit_log()[-2:]] == ["alice", "alice"]


def test_rollback_over_http_returns_traffic_to_stable(clock: ManualClock) -> None:
    """rollback answers the JSON of 'rollback --json' and records the reason."""
    manager = canary_in_progress(clock)
    client = TestClient(make_app(manager, clock))
    candidate = manager.get_rollout_status()
    assert candidate is not None
    answer = client.post("/api/v1/rollback", json={"reason": "bad latency"}, headers=AUTH).json()
    assert answer == {"rolled_back": candidate.version_id, "active_version": candidate.stable_version_id}
    assert manager.audit_log()[-1].reason == "bad latency"
    assert manager.audit_log()[-1].actor == "alice"


def test_conclude_picks_the_ab_winner(client: TestClient) -> None:
    """conclude with a winner ends the A/B test; without one it is a 422 problem."""
    deploy(client)
    v2 = deploy(client, {"bundle": bundle_json(GATEWAY_V2), "strategy": "ab-test"})["version_id"]
    assert_problem(client.post("/api/v1/conclude", json={}, headers=AUTH), 422, "winner")
    assert client.post("/api/v1/conclude", json={"winner": v2}, headers=AUTH).json() == {
        "winner": v2,
        "active_version": v2,
    }


def test_a_scheduled_version_is_staged_then_activated_when_due(client: TestClient, clock: ManualClock) -> None:
    """deploy with 'at' only prepares; activate before the time is a 409, after it serves."""
    deploy(client)
    staged = deploy(client, {"bundle": bundle_json(GATEWAY_V2), "at": clock.t + 3600})
    assert staged["state"] == "staged"
    assert_problem(client.post("/api/v1/activate", json={"version_id": staged["version_id"]}, headers=AUTH), 409)
    clock.advance(3601)
    answer = client.post("/api/v1/activate", json={"version_id": staged["version_id"]}, headers=AUTH).json()
    assert answer["active_version"] == staged["version_id"]


def test_an_operation_that_cannot_happen_is_a_409_problem(client: TestClient) -> None:
    """promote with no canary in progress: a conflict naming why."""
    deploy(client)
    assert_problem(client.post("/api/v1/promote", headers=AUTH), 409)


def test_the_fleet_view_lists_the_instances_and_their_convergence(
    client: TestClient, manager: DeploymentManager
) -> None:
    """GET /api/v1/fleet answers the instances registered on the store and the fleet summary."""
    manager.fleet.beat()  # what a following manager's background loop does
    answer = client.get("/api/v1/fleet", headers=AUTH)
    assert answer.status_code == 200
    body = answer.json()
    (instance,) = body["instances"]
    assert instance["pid"] == os.getpid()
    assert instance["instance_id"] == manager.fleet.instance_id
    assert instance["stale"] is None
    assert body["fleet"]["instances"] == 1
    assert body["fleet"]["converged"] is True


def test_every_lifecycle_operation_runs_through_the_api(clock: ManualClock) -> None:
    """pause, resume, abort, retry, undo and cancel change the store as the CLI's commands do, audited by token."""
    manager = canary_in_progress(clock)
    client = TestClient(make_app(manager, clock), raise_server_exceptions=False)
    candidate = manager.get_rollout_status().version_id  # type: ignore[union-attr]

    def post(name: str, **body: Any) -> Any:
        response = client.post(f"/api/v1/{name}", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    assert post("pause", reason="look at the graph")["rollout"]["paused"] is True
    assert post("resume")["rollout"]["paused"] is False
    assert post("abort")["rollout"] is None
    assert manager.get_deployment_info(candidate).state.value == "aborted"  # type: ignore[union-attr]
    assert post("retry")["rollout"]["version_id"] == candidate
    post("promote")
    assert manager.get_active_version_id() == candidate
    previous = post("undo")["active_version"]
    assert previous != candidate
    staged = manager.prepare_deployment(bundle_json(), deployed_by="t")
    post("cancel", version_id=staged)
    assert manager.get_deployment_info(staged).state.value == "cancelled"  # type: ignore[union-attr]
    assert {
        e.actor for e in manager.audit_log() if e.action in ("pause", "resume", "abort", "retry", "undo", "cancel")
    } == {"alice"}
    assert_problem(client.post("/api/v1/cancel", json={}, headers=AUTH), 422, "version_id")


def test_an_operation_runs_once_the_manager_has_it(clock: ManualClock) -> None:
    """The table row lights up as soon as the manager grows the method (one line per operation)."""

    class Pausable(DeploymentManager):
        def pause_rollout(self, *, actor: str = "unknown", reason: str = "") -> str:  # type: ignore[override]
            self.paused_by = actor
            return "paused"

    manager = Pausable(clock=clock)
    client = TestClient(make_app(manager, clock))
    answer = client.post("/api/v1/pause", json={"reason": "look at it"}, headers=AUTH).json()
    assert answer["result"] == "paused"
    assert manager.paused_by == "alice"


# --- evaluation ------------------------------------------------------------------------------------


def test_evaluate_one_event(client: TestClient) -> None:
    """The answer has the fields of 'evaluate --json'."""
    deploy(client)
    answer = client.post("/api/v1/evaluate", json={"event": {"request": {"path": "/healthz"}}}).json()
    assert answer["decision"] == "allow"
    assert answer["rule_id"] == "allow-health-check"
    assert set(answer) == {"decision", "rule_id", "reason", "params", "version_id", "error"}


def test_evaluate_before_any_version_answers_skip(client: TestClient) -> None:
    """No active version: a skip decision with an error, never a server error."""
    answer = client.post("/api/v1/evaluate", json={"event": {}}).json()
    assert answer["decision"] == "skip"
    assert answer["error"]


def test_evaluate_a_batch_routes_each_key_like_the_library(clock: ManualClock) -> None:
    """A batch with keys gives what RuleEngine.evaluate gives for each (same routing, same version)."""
    manager = canary_in_progress(clock)
    client = TestClient(make_app(manager, clock))
    events = [{"request": {"path": "/x"}, "risk_score": 0.5} for _ in range(50)]
    keys = [f"user-{i}" for i in range(50)]
    results = client.post("/api/v1/evaluate", json={"events": events, "keys": keys}).json()["results"]
    engine = RuleEngine(manager)
    assert [r["version_id"] for r in results] == [
        engine.evaluate(e, key=k).version_id for e, k in zip(events, keys, strict=True)
    ]
    assert len({r["version_id"] for r in results}) == 2  # both versions serve at 10%... of 50 keys


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"event": {}, "events": [{}]},
        {"event": {}, "keys": ["a"]},
        {"events": [{}, {}], "keys": ["a"]},
        {"events": [{}] * 1001},
        {"event": "not an object"},
        {"event": {}, "extra": 1},
    ],
)
def test_evaluate_refuses_malformed_bodies(client: TestClient, body: dict[str, Any]) -> None:
    """Exactly one of event/events, keys matching events, at most 1000 per batch: else 422."""
    assert_problem(client.post("/api/v1/evaluate", json=body), 422)


def test_a_batch_at_the_limit_is_answered(client: TestClient) -> None:
    """1000 events (the bound) are evaluated."""
    deploy(client)
    results = client.post("/api/v1/evaluate", json={"events": [{}] * 1000}).json()["results"]
    assert len(results) == 1000


# --- limits and errors -------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused(manager: DeploymentManager) -> None:
    """413 problem whether the size is declared or streamed without Content-Length."""
    client = TestClient(make_app(manager, max_body_bytes=2048))
    big = json.dumps({"event": {"x": "y" * 4096}}).encode()
    assert_problem(client.post("/api/v1/evaluate", content=big, headers={"content-type": "application/json"}), 413)

    def chunks() -> Iterator[bytes]:
        yield big[:1500]
        yield big[1500:]

    response = client.post("/api/v1/evaluate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    ok = client.post("/api/v1/evaluate", json={"event": {"x": "y" * 1000}})
    assert ok.status_code == 200


@pytest.mark.parametrize("raw", [b"{", b"[" * 100_000, b"\xff\xfe", b'{"event": NaN}'])
def test_unparsable_bodies_are_client_errors(client: TestClient, raw: bytes) -> None:
    """Broken or absurdly nested JSON is a 4xx problem, never a 500."""
    response = client.post("/api/v1/evaluate", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/problem+json")


def test_an_unexpected_failure_is_a_500_problem_without_a_trace(
    client: TestClient, manager: DeploymentManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug answers 500 naming only the error type: no stack trace, no message leaked."""

    def broken() -> list[str]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(manager, "get_deployment_history", broken)
    response = client.get("/api/v1/versions")
    problem = assert_problem(response, 500, "RuntimeError")
    assert "secret internals" not in response.text
    assert problem["instance"] == "/api/v1/versions"


def test_unknown_paths_are_404_problems(client: TestClient) -> None:
    """Routing errors are problems too."""
    assert_problem(client.get("/api/v1/nothing"), 404)
    assert_problem(client.get("/api/v1/deploy"), 405)


# --- documents -------------------------------------------------------------------------------------


def test_the_openapi_document_names_every_endpoint(client: TestClient) -> None:
    """Every read, write and probe is in the OpenAPI document."""
    paths = set(client.get("/api/v1/openapi.json").json()["paths"])
    expected = {
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/status",
        "/api/v1/history",
        "/api/v1/versions",
        "/api/v1/audit",
        "/api/v1/experiment",
        "/api/v1/deployments",
        "/api/v1/fleet",
        "/api/v1/events",
        "/api/v1/evaluate",
        *WRITES,
    }
    assert expected <= paths


def test_events_stream_the_status(client: TestClient) -> None:
    """GET /api/v1/events is an SSE stream whose events carry the status document."""
    version = deploy(client)["version_id"]
    with client.stream("GET", "/api/v1/events?max_events=1") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    data = next(line[len("data: ") :] for line in text.splitlines() if line.startswith("data: "))
    payload = json.loads(data)
    assert payload["status"]["active_version"] == version
    assert all(op["available"] for op in payload["operations"])  # every lifecycle operation is in the manager now


def test_the_dashboard_page_is_served_with_a_strict_policy(client: TestClient) -> None:
    """GET / is the page; its scripts come from /static (CSP forbids inline scripts)."""
    page = client.get("/")
    assert page.status_code == 200
    assert "dashboard.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/dashboard.js").status_code == 200


def test_scheduled_strategy_object_from_an_iso_time(client: TestClient) -> None:
    """'at' as ISO 8601 with a timezone schedules the version."""
    deploy(client)
    staged = deploy(client, {"bundle": bundle_json(GATEWAY_V2), "at": "2030-01-01T09:00:00Z"})
    assert staged["strategy"] == Scheduled(1893488400.0).to_dict()


def test_ab_options_imply_the_ab_strategy(client: TestClient) -> None:
    """Like the CLI, split_ratio alone means an A/B test."""
    deploy(client)
    body = deploy(client, {"bundle": bundle_json(GATEWAY_V2), "split_ratio": 0.8})
    assert body["strategy"] == ABTest(0.8).to_dict()


def test_with_a_trust_policy_only_signed_bundles_deploy(clock: ManualClock) -> None:
    """An unsigned bundle is a 403 problem; the same bundle with its signature deploys."""
    from rule_engine import TrustPolicy, load_bundle, sign_bundle
    from rule_engine.bundle.signing import HmacKey

    secret = b"k" * 32
    manager = DeploymentManager(clock=clock, trust=TrustPolicy(hmac={"ci": secret}))
    client = TestClient(make_app(manager, clock))
    assert_problem(client.post("/api/v1/deploy", json={"bundle": bundle_json()}, headers=AUTH), 403)
    signature = sign_bundle(load_bundle(GATEWAY_V1), HmacKey("ci", secret)).to_dict()
    body = {"bundle": bundle_json(), "signature": signature}
    assert client.post("/api/v1/deploy", json=body, headers=AUTH).status_code == 201
    assert manager.get_active_version_id() is not None


def test_the_event_stream_sends_a_new_event_when_the_state_changes(clock: ManualClock) -> None:
    """After the first event, a rollback committed elsewhere is streamed as the next one."""
    manager = canary_in_progress(clock)
    client = TestClient(make_app(manager, clock, events_interval=60))  # only a change makes a new event
    seen: list[dict[str, Any]] = []
    with client.stream("GET", "/api/v1/events?max_events=2") as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line[len("data: ") :]))
            if len(seen) == 1:
                manager.rollback(actor="elsewhere")
    assert [p["status"]["rollout"] is None for p in seen] == [False, True]
    assert seen[1]["revision"] > seen[0]["revision"]
