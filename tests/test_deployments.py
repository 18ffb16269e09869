"""Several policies in one store (issue 11 part 3): independent deployments, named, listed, refused across."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from freezegun import freeze_time
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_engine import Canary, DeploymentManager, PolicyMismatchError, RuleEngine
from rule_engine.errors import AmbiguousDeploymentError, DeploymentNotFoundError
from rule_engine.stores.base import StateStore
from rule_engine.stores.memory import MemoryStore
from tests._support_deployment import BUNDLES, GATEWAY_V1, GATEWAY_V2, START
from tests._support_health import THRESHOLDS

FRAUD = BUNDLES / "fraud-screen.json"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | StateStore]:
    """A store both managers open: one memory store object, or one SQLite file."""
    if request.param == "memory":
        shared = MemoryStore()
        yield shared
    else:
        yield f"sqlite:///{tmp_path / 'state.db'}"


def _fraud_v2(tmp_path: Path) -> Path:
    data = json.loads(FRAUD.read_text())
    data["version"] = "3.2.0"
    data["description"] = "the next fraud screen"
    path = tmp_path / "fraud-v2.json"
    path.write_text(json.dumps(data))
    return path


def _open(url: str | StateStore, name: str | None = None, **kwargs: object) -> DeploymentManager:
    return DeploymentManager.open(url, deployment=name, follow=False, thresholds=THRESHOLDS, **kwargs)  # type: ignore[arg-type]


def _traffic(engine: RuleEngine, n: int, prefix: str) -> None:
    for i in range(n):
        engine.evaluate({"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "FR"}}, key=f"{prefix}{i}")


def test_two_policies_roll_out_independently_and_a_rollback_of_one_leaves_the_other(
    store_url: str | StateStore, tmp_path: Path
) -> None:
    """A canary on gateway-access and a blue-green on fraud-screen in one store never touch each other."""
    with freeze_time(START) as clock:
        gateway = _open(store_url, "gateway-access")
        fraud = _open(store_url, "fraud-screen")
        g1 = gateway.prepare_deployment(GATEWAY_V1)
        gateway.activate_deployment(g1)
        f1 = fraud.prepare_deployment(FRAUD)
        fraud.activate_deployment(f1)
        g2 = gateway.prepare_deployment(GATEWAY_V2, Canary((10, 50, 100), 60))
        gateway.activate_deployment(g2)
        fraud_revision = fraud.store.revision()
        engine = RuleEngine(gateway)
        for stage in range(2):
            _traffic(engine, 3000, f"s{stage}-")
            clock.tick(61)
            assert gateway.tick().actions == (f"advanced {g2}",)
            assert fraud.tick().actions == ()
        assert gateway.get_active_version_id() == g2
        assert fraud.store.revision() == fraud_revision  # gateway's commits never moved fraud's revision
        assert fraud.refresh() is False
        f2 = fraud.prepare_deployment(_fraud_v2(tmp_path))
        fraud.activate_deployment(f2)  # blue-green: at once
        assert fraud.get_active_version_id() == f2
        assert gateway.get_active_version_id() == g2
        assert gateway.rollback(actor="oncall") == g1
        assert gateway.get_active_version_id() == g1
        assert fraud.get_active_version_id() == f2  # the other policy still serves its new version
        assert {e.version_id for e in fraud.store.audit_log()} == {f1, f2}
        assert {e.version_id for e in gateway.store.audit_log()} == {g1, g2}
        assert gateway.store.verify_audit().ok
        assert fraud.store.verify_audit().ok
        summaries = {d.name: d for d in gateway.store.deployments()}
        assert sorted(summaries) == ["fraud-screen", "gateway-access"]
        assert summaries["fraud-screen"].active_version_id == f2
        assert summaries["gateway-access"].active_version_id == g1
        gateway.close()
        fraud.close()


def test_a_bundle_of_another_policy_is_refused_and_says_how_to_deploy_it(store_url: str | StateStore) -> None:
    """fraud-screen into the gateway-access deployment: refused, nothing changes; as its own deployment it goes."""
    gateway = _open(store_url)
    gateway.activate_deployment(gateway.prepare_deployment(GATEWAY_V1))
    assert gateway.store.deployment == "gateway-access"  # the first deploy named the deployment
    revision = gateway.store.revision()
    with pytest.raises(PolicyMismatchError, match=r"deployment of its own \(deployment='fraud-screen'\)"):
        gateway.prepare_deployment(FRAUD)
    assert gateway.store.revision() == revision
    fraud = _open(store_url, "fraud-screen")
    fraud.activate_deployment(fraud.prepare_deployment(FRAUD))
    assert gateway.store.deployment_names() == ["fraud-screen", "gateway-access"]
    fraud.close()
    gateway.close()


def test_opening_picks_the_only_deployment_and_names_the_ones_there_are(tmp_path: Path) -> None:
    """None names the only one; with several it is a typed error listing them; an unknown name too (read-only)."""
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    first = _open(store_url)
    first.activate_deployment(first.prepare_deployment(GATEWAY_V1))
    first.close()
    again = _open(store_url)
    assert again.store.deployment == "gateway-access"
    assert again.get_active_version_id() is not None
    again.close()
    other = _open(store_url, "fraud-screen")
    other.activate_deployment(other.prepare_deployment(FRAUD))
    other.close()
    with pytest.raises(AmbiguousDeploymentError, match="2 deployments \\('fraud-screen', 'gateway-access'\\)"):
        _open(store_url)
    with pytest.raises(DeploymentNotFoundError, match=r"no deployment 'nope'.*'fraud-screen', 'gateway-access'"):
        _open(store_url, "nope", create=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=12), st.sampled_from(["memory", "sqlite"]))
def test_interleaved_commits_never_leak_between_deployments(order: list[str], backend: str) -> None:
    """For every interleaving: each deployment's revision is its own commit count, its audit and chain its own."""
    import tempfile

    from rule_engine.stores.sqlite import SQLiteStore
    from rule_engine.testing import audit_entry, control_state

    with tempfile.TemporaryDirectory() as tmp:
        root: StateStore = MemoryStore() if backend == "memory" else SQLiteStore(Path(tmp) / "state.db")
        handles = {name: root.scoped(name) for name in "abc"}
        for name in order:
            handle = handles[name]
            handle.commit(handle.revision(), control_state(), audit=[audit_entry(f"{name}-v")])
        for name, handle in handles.items():
            assert handle.revision() == order.count(name)
            assert {e.version_id for e in handle.audit_log()} <= {f"{name}-v"}
            assert len(handle.audit_log()) == order.count(name)
            check = handle.verify_audit()
            assert check.ok
            assert check.checked == order.count(name)
        assert root.deployment_names() == sorted(set(order))
        for handle in handles.values():
            handle.close()
        root.close()
