"""One bucket rule: routing.goes_to_candidate, the copy inlined in RuleEngine.evaluate and the manager agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rule_engine import DeploymentManager, RuleEngine, RuleTable, ServingSnapshot, load_bundle
from rule_engine.serving.routing import Salt, goes_to_candidate
from rule_engine.serving.snapshot import ServingCell

CASES = Path(__file__).resolve().parent / "cases"
BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
VECTORS = json.loads((CASES / "routing_v1.json").read_text())["vectors"]
EVENT = {"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "US"}}


@pytest.fixture(scope="module")
def tables() -> tuple[RuleTable, RuleTable]:
    base = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v1.json"))
    return base.restamped("stable"), base.restamped("candidate")


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['key']}/{v['bucket']}")
def test_every_copy_routes_a_golden_vector_alike(
    vector: dict[str, object], tables: tuple[RuleTable, RuleTable]
) -> None:
    """At share = bucket + 1 the key is the candidate's, at share = bucket it is the stable's: everywhere."""
    stable, candidate = tables
    salt = Salt.from_text(str(vector["salt"]))
    bucket = int(str(vector["bucket"]))
    for share_bp, expected in ((bucket + 1, "candidate"), (bucket, "stable")):
        if share_bp <= 0:
            continue
        snapshot = ServingSnapshot.build(stable, candidate, salt, share_bp)
        request_hash = int(str(vector["request_hash"]))
        by_rule = goes_to_candidate(snapshot.multiplier, snapshot.offset, snapshot.limit, request_hash)
        assert ("candidate" if by_rule else "stable") == expected
        manager = DeploymentManager()
        manager.serving_cell.current = snapshot
        if vector["key"] is not None:  # some vectors give only the request hash
            decision = RuleEngine(ServingCell(snapshot)).evaluate(EVENT, key=str(vector["key"]))
            assert decision.version_id == expected
            routed = manager.route(str(vector["key"]))
            assert routed is not None
            assert routed.version_id == expected
        routed_by_hash = manager.route_and_get_table(request_hash)
        assert routed_by_hash is not None
        assert routed_by_hash.version_id == expected
