"""One bucket rule: routing.goes_to_candidate and every copy inlined on a hot path agree, for both algorithms.

The copies: ``RuleEngine.evaluate`` (serving/engine.py), ``route_table`` (serving/targeting.py: any key,
scope and pins) and ``DeploymentManager.route`` (a str key on a hash-only snapshot: algorithm 2, no scope,
no pins). Each is held to the golden vectors of its algorithm at ``share = bucket + 1`` (candidate) and
``share = bucket`` (stable).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rule_engine import DeploymentManager, RuleEngine, RuleTable, ServingSnapshot, compute_request_hash, load_bundle
from rule_engine.serving.routing import Salt, goes_to_candidate
from rule_engine.serving.snapshot import ServingCell
from rule_engine.serving.targeting import Targeting, route_table

CASES = Path(__file__).resolve().parent / "cases"
BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
VECTORS = json.loads((CASES / "routing_v1.json").read_text())["vectors"]
VECTORS_V2 = json.loads((CASES / "routing_v2.json").read_text())["vectors"]
EVENT = {"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "US"}}


@pytest.fixture(scope="module")
def tables() -> tuple[RuleTable, RuleTable]:
    base = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v1.json"))
    return base.restamped("stable"), base.restamped("candidate")


def _every_copy(snapshot: ServingSnapshot, key: object, request_hash: int) -> dict[str, str]:
    """Where each copy of the rule sends ``key`` (whose hash under the snapshot's seed is ``request_hash``)."""
    manager = DeploymentManager()
    manager.serving_cell.current = snapshot
    by_rule = goes_to_candidate(snapshot.multiplier, snapshot.offset, snapshot.limit, request_hash)
    routed: dict[str, str] = {"routing.goes_to_candidate": "candidate" if by_rule else "stable"}
    by_hash = manager.route_and_get_table(request_hash)
    assert by_hash is not None
    routed["route_and_get_table"] = by_hash.version_id
    if key is not None:  # some vectors give only the request hash
        routed["RuleEngine.evaluate"] = RuleEngine(ServingCell(snapshot)).evaluate(EVENT, key=key).version_id
        for name, table in (("manager.route", manager.route(key)), ("route_table", route_table(snapshot, key))):
            assert table is not None
            routed[name] = table.version_id
    return routed


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['key']}/{v['bucket']}")
def test_every_copy_routes_a_golden_vector_alike(
    vector: dict[str, object], tables: tuple[RuleTable, RuleTable]
) -> None:
    """Algorithm 1: at share = bucket + 1 the key is the candidate's, at share = bucket the stable's: everywhere."""
    stable, candidate = tables
    salt = Salt.from_text(str(vector["salt"]))
    bucket = int(str(vector["bucket"]))
    for share_bp, expected in ((bucket + 1, "candidate"), (bucket, "stable")):
        if share_bp <= 0:
            continue
        snapshot = ServingSnapshot.build(stable, candidate, salt, share_bp)
        assert not snapshot.hash_only
        key = None if vector["key"] is None else str(vector["key"])
        routed = _every_copy(snapshot, key, int(str(vector["request_hash"])))
        assert set(routed.values()) == {expected}, routed


@pytest.mark.parametrize("vector", VECTORS_V2, ids=lambda v: f"{v['key']}/{v['bucket']}")
def test_every_copy_routes_a_v2_golden_vector_alike(
    vector: dict[str, object], tables: tuple[RuleTable, RuleTable]
) -> None:
    """Algorithm 2: the same, through the manager's hash-only fast path (and, with a scope, without it)."""
    stable, candidate = tables
    salt = Salt.from_text(str(vector["salt"]), 2)
    bucket = int(str(vector["bucket"]))
    key = str(vector["key"])
    for share_bp, expected in ((bucket + 1, "candidate"), (bucket, "stable")):
        if share_bp <= 0:
            continue
        plain = ServingSnapshot.build(stable, candidate, salt, share_bp)
        assert plain.hash_only  # DeploymentManager.route's inlined copy serves it
        everyone = Targeting.build(("api_gateway",), (), None)  # in scope: routed by the same hash
        scoped = ServingSnapshot.build(stable, candidate, salt, share_bp, targeting=everyone)
        assert not scoped.hash_only
        for snapshot in (plain, scoped):
            routed = _every_copy(snapshot, key, int(str(vector["hash"])))
            if snapshot is scoped:  # route(key) without an event is outside any scope: stable
                assert routed.pop("manager.route") == routed.pop("route_table") == "stable"
                table = route_table(snapshot, key, EVENT)
                assert table is not None
                routed["route_table(event)"] = table.version_id
            assert set(routed.values()) == {expected}, routed


def test_hash_only_is_derived_from_the_snapshot_it_is_on(tables: tuple[RuleTable, RuleTable]) -> None:
    """hash_only cannot go stale: a copy without the candidate, or under algorithm 1, routes the slow way."""
    import dataclasses

    stable, candidate = tables
    snapshot = ServingSnapshot.build(stable, candidate, Salt.from_text("s", 2), 10_000)
    assert snapshot.hash_only
    assert not dataclasses.replace(snapshot, candidate=None).hash_only
    assert not dataclasses.replace(snapshot, multiplier=3).hash_only
    assert not ServingSnapshot.build(stable, None, Salt.from_text("s", 2), 10_000).hash_only
    manager = DeploymentManager()
    manager.serving_cell.current = dataclasses.replace(snapshot, candidate=None)
    assert manager.route("user-1") is stable


@pytest.mark.parametrize("vector", VECTORS_V2[:8], ids=lambda v: f"{v['key']}/{v['bucket']}")
def test_a_hash_computed_ahead_with_the_snapshots_seed_routes_as_the_key(
    vector: dict[str, object], tables: tuple[RuleTable, RuleTable]
) -> None:
    """compute_request_hash(key, seed=snapshot.seed) + route_and_get_table == route(key), under v2 too."""
    stable, candidate = tables
    salt = Salt.from_text(str(vector["salt"]), 2)
    manager = DeploymentManager()
    for share_bp in (int(str(vector["bucket"])), int(str(vector["bucket"])) + 1):
        manager.serving_cell.current = ServingSnapshot.build(stable, candidate, salt, share_bp)
        key = str(vector["key"])
        h = compute_request_hash(key, seed=manager.snapshot.seed)
        assert h == vector["hash"]
        by_hash, by_key = manager.route_and_get_table(h), manager.route(key)
        assert by_hash is not None
        assert by_key is not None
        assert by_hash.version_id == by_key.version_id
    with pytest.raises(ValueError, match="seed"):
        compute_request_hash("k", seed=-1)
