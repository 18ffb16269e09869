"""Routing algorithm v2 (the salt is murmur3's seed): golden vectors, the routing guarantees, one rule everywhere."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_engine import RuleEngine, RuleTable, ServingSnapshot, load_bundle
from rule_engine.serving.routing import (
    LATEST_ALGORITHM,
    Salt,
    bucket_of,
    goes_to_candidate,
    key_goes_to_candidate,
)
from rule_engine.serving.snapshot import ServingCell

CASES = json.loads((Path(__file__).parent / "cases" / "routing_v2.json").read_text(encoding="utf-8"))
BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
KEYS = [f"user-{i}" for i in range(20_000)]
EVENT = {"agent_id": "api_gateway", "flow_id": "login", "geo": {"country": "US"}}


def spec_seed(salt: str) -> int:
    """sha256(salt) bytes 0..3, big-endian."""
    return int.from_bytes(hashlib.sha256(salt.encode("utf-8")).digest()[:4], "big")


def spec_hash(key: str, salt: str) -> int:
    """Unsigned murmur3 of the UTF-8 key with the salt's seed (from the signed hash, two's complement)."""
    return mmh3.hash(key.encode("utf-8", "surrogatepass"), spec_seed(salt)) & 0xFFFF_FFFF


def test_golden_file_is_for_algorithm_2() -> None:
    """The v2 golden file is for the newest algorithm."""
    assert CASES["algorithm"] == LATEST_ALGORITHM == 2
    assert len(CASES["vectors"]) >= 40


@pytest.mark.parametrize("vector", CASES["vectors"], ids=lambda v: repr(v["key"]))
def test_code_and_spec_reproduce_golden_vectors(vector: dict[str, object]) -> None:
    """Salt.from_text(.., 2), its request hash and bucket, and the spec give the checked-in numbers."""
    salt = Salt.from_text(str(vector["salt"]), 2)
    assert salt.seed == vector["seed"] == spec_seed(str(vector["salt"]))
    assert salt.request_hash(vector["key"]) == vector["hash"] == spec_hash(str(vector["key"]), str(vector["salt"]))
    assert salt.bucket(int(str(vector["hash"]))) == vector["bucket"]


@pytest.mark.parametrize("row", CASES["limits"], ids=lambda r: str(r["share_bp"]))
def test_limits_match_golden_vectors(row: dict[str, object]) -> None:
    """Salt.limit under v2 is ceil(share * 2**32 / 10000), clamped to 0 and 2**32."""
    assert Salt.from_text("any", 2).limit(int(str(row["share_bp"]))) == row["limit"]


@given(request_hash=st.integers(0, 2**32 - 1), salt_text=st.text(max_size=30), share_bp=st.integers(-5, 10_005))
def test_limit_is_equivalent_to_bucket_below_share(request_hash: int, salt_text: str, share_bp: int) -> None:
    """``hash < limit`` decides exactly as ``bucket < share`` under v2, as goes_to_candidate says."""
    salt = Salt.from_text(salt_text, 2)
    expected = bucket_of(request_hash, salt) < share_bp
    assert (request_hash < salt.limit(share_bp)) == expected
    assert goes_to_candidate(salt.multiplier, salt.offset, salt.limit(share_bp), request_hash) == expected


@settings(max_examples=30, deadline=None)
@given(salt_text=st.text(min_size=1, max_size=20), low=st.integers(1, 9_999), step=st.integers(1, 9_999))
def test_cohorts_are_sticky_and_only_grow(salt_text: str, low: int, step: int) -> None:
    """A key in at some share is in at every larger share (and always the same answer for one share)."""
    salt = Salt.from_text(salt_text, 2)
    high = min(10_000, low + step)
    buckets = [salt.bucket(salt.request_hash(k) or 0) for k in KEYS[:2000]]
    assert buckets == [salt.bucket(salt.request_hash(k) or 0) for k in KEYS[:2000]]
    assert {i for i, b in enumerate(buckets) if b < low} <= {i for i, b in enumerate(buckets) if b < high}


@settings(max_examples=10, deadline=None)
@given(salt_text=st.text(min_size=1, max_size=20), share_bp=st.sampled_from([100, 1000, 2500, 5000, 9000]))
def test_share_is_within_one_point(salt_text: str, share_bp: int) -> None:
    """Of 20,000 keys, the candidate's share is within +-1 percentage point of the stage's."""
    salt = Salt.from_text(salt_text, 2)
    limit = salt.limit(share_bp)
    inside = sum(1 for k in KEYS if (salt.request_hash(k) or 0) < limit)
    assert abs(inside / len(KEYS) - share_bp / 10_000) <= 0.01


def test_different_salts_pick_independent_cohorts() -> None:
    """Two rollouts at 50% share about a quarter of keys (independent cohorts), not all or none."""
    a, b = Salt.from_text("rollout-a", 2), Salt.from_text("rollout-b", 2)
    both = sum(1 for k in KEYS if a.bucket(a.request_hash(k) or 0) < 5000 and b.bucket(b.request_hash(k) or 0) < 5000)
    assert abs(both / len(KEYS) - 0.25) <= 0.015


@pytest.fixture(scope="module")
def tables() -> tuple[RuleTable, RuleTable]:
    base = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v1.json"))
    return base.restamped("stable"), base.restamped("candidate")


@pytest.mark.parametrize("algorithm", [1, 2])
def test_the_engine_inlined_copy_routes_as_routing_py(algorithm: int, tables: tuple[RuleTable, RuleTable]) -> None:
    """For both algorithms RuleEngine.evaluate, key_goes_to_candidate and the salt's bucket agree on every key."""
    stable, candidate = tables
    salt = Salt.from_text("gateway-access@2.0.0+89abcdef.2", algorithm)
    for share_bp in (1, 1000, 5000, 9999):
        snapshot = ServingSnapshot.build(stable, candidate, salt, share_bp)
        engine = RuleEngine(ServingCell(snapshot))
        for key in [*KEYS[:300], "\ud800", "ü-ß", 12345, b"raw", None]:
            by_rule = key_goes_to_candidate(snapshot.seed, snapshot.multiplier, snapshot.offset, snapshot.limit, key)
            request_hash = salt.request_hash(key)
            by_bucket = request_hash is not None and salt.bucket(request_hash) < share_bp
            routed = engine.evaluate(EVENT, key=key).version_id
            assert by_rule == by_bucket
            assert routed == ("candidate" if by_rule else "stable"), (algorithm, share_bp, key)


def test_a_v1_salt_keeps_routing_by_v1() -> None:
    """A rollout stored with algorithm 1 keeps v1's numbers (its golden vectors are unchanged)."""
    v1 = json.loads((Path(__file__).parent / "cases" / "routing_v1.json").read_text(encoding="utf-8"))
    vector = v1["vectors"][0]
    salt = Salt.from_text(vector["salt"], 1)
    assert (salt.seed, salt.multiplier, salt.offset) == (0, vector["multiplier"], vector["offset"])
    assert salt.bucket(vector["request_hash"]) == vector["bucket"]


def test_an_unknown_algorithm_is_refused() -> None:
    """Salt.from_text names the known algorithms for an unknown one."""
    with pytest.raises(ValueError, match="unknown routing algorithm 3"):
        Salt.from_text("x", 3)


@pytest.mark.parametrize("algorithm", [1, 2])
def test_preview_routes_by_the_rollouts_algorithm(algorithm: int, tables: tuple[RuleTable, RuleTable]) -> None:
    """preview counts exactly the keys the engine would send to the candidate under that algorithm."""
    from rule_engine.analysis.events import Recorded
    from rule_engine.analysis.preview import preview

    stable, candidate = tables
    salt_text = "gateway-access@2.0.0+89abcdef.2"
    keys = KEYS[:2000]
    report = preview(
        candidate,
        stable,
        salt_text,
        [Recorded(i, EVENT, k) for i, k in enumerate(keys)],
        stages=[10, 50],
        algorithm=algorithm,
    )
    salt = Salt.from_text(salt_text, algorithm)
    for stage, share_bp in zip(report.stages, (1000, 5000), strict=True):
        engine = RuleEngine(ServingCell(ServingSnapshot.build(stable, candidate, salt, share_bp)))
        assert stage.keys == sum(1 for k in keys if engine.evaluate(EVENT, key=k).version_id == "candidate")


def test_a_live_rollout_routes_by_the_algorithm_stored_with_it() -> None:
    """The manager, the engine and the stored rollout's salt (with its algorithm) route every key alike."""
    from rule_engine import BlueGreen, Canary, DeploymentManager
    from tests._support_deployment import mini_bundle

    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "test"))
    candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary((30, 100), 60), "test")
    manager.activate_deployment(candidate)
    rollout = manager.store.load().rollout
    assert rollout is not None
    salt = Salt.from_text(rollout.salt, rollout.algorithm)
    engine = RuleEngine(manager)
    for key in KEYS[:2000]:
        request_hash = salt.request_hash(key)
        expected = request_hash is not None and salt.bucket(request_hash) < rollout.share_bp
        routed = manager.route(key)
        assert routed is not None
        assert (routed.version_id == candidate) == expected
        assert (engine.evaluate({"x": 1}, key=key).version_id == candidate) == expected


def test_a_stored_rollout_reads_back_its_algorithm_and_refuses_an_unknown_one() -> None:
    """Rollouts stored before algorithms were recorded read as v1; a stored algorithm the code lacks is refused."""
    from rule_engine import BlueGreen, Canary, DeploymentManager
    from rule_engine.control.records import Rollout
    from rule_engine.serving.routing import ALGORITHM_VERSION
    from tests._support_deployment import mini_bundle

    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "test"))
    manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0"), Canary((30, 100), 60), "test"))
    rollout = manager.state.rollout
    assert rollout is not None
    assert rollout.algorithm == ALGORITHM_VERSION == LATEST_ALGORITHM
    assert manager.snapshot.multiplier == 0
    assert manager.snapshot.seed == Salt.from_text(rollout.salt, 2).seed
    assert manager.fleet.info(0.0).routing_algorithm == LATEST_ALGORITHM
    stored = rollout.to_dict()
    assert Rollout.from_dict(stored) == rollout
    del stored["algorithm"]
    assert Rollout.from_dict(stored).algorithm == 1
    with pytest.raises(ValueError, match="unknown routing algorithm 3"):
        Rollout.from_dict({**stored, "algorithm": 3})
