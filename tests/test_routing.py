"""Routing algorithm v1: golden vectors, and the guarantees of docs/routing.md on a live manager.

A live manager's new rollouts route by algorithm 2 (``ALGORITHM_VERSION``): the guarantees below hold
for it too; a request hash given to ``route_and_get_table`` is the key's hash under the rollout's seed
(``hash_key(key, manager.snapshot.seed)``: seed 0, ``compute_request_hash``, under algorithm 1).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import mmh3
import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from rule_engine import ABTest, BlueGreen, Canary, DeploymentManager, RuleEngine, compute_request_hash
from rule_engine.serving.routing import ALGORITHM_VERSION, ALGORITHMS, Salt, bucket_of, hash_key
from tests._support_deployment import START, mini_bundle

CASES = json.loads((Path(__file__).parent / "cases" / "routing_v1.json").read_text(encoding="utf-8"))
KEYS = [f"user-{i}" for i in range(100_000)]
HASHES = [compute_request_hash(k) for k in KEYS]


# --- an independent implementation of the spec (hashlib, integers and mmh3 only) ---------------------


def spec_request_hash(key: str) -> int:
    """Unsigned 32-bit murmur3 (seed 0) of the UTF-8 key, taken from the *signed* hash two's-complement."""
    return mmh3.hash(key.encode("utf-8"), 0) & 0xFFFF_FFFF


def spec_salt(text: str) -> tuple[int, int]:
    """(multiplier, offset) of a salt text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") | 1, int.from_bytes(digest[8:16], "big")


def spec_bucket(request_hash: int, salt_text: str) -> int:
    """The bucket 0..9999 of a request hash under a salt."""
    a, b = spec_salt(salt_text)
    mixed = ((a * request_hash + b) % 2**64) // 2**32
    return mixed * 10_000 // 2**32


def spec_limit(share_bp: int) -> int:
    """The 64-bit bound: ceil(share * 2**32 / 10000) * 2**32, clamped to 0 and 2**64."""
    if share_bp <= 0:
        return 0
    if share_bp >= 10_000:
        return 2**64
    return ((share_bp * 2**32 + 9_999) // 10_000) * 2**32


# --- golden vectors -------------------------------------------------------------------------------


def test_golden_file_is_for_algorithm_1() -> None:
    """The golden file is for algorithm 1, which the code still implements (for rollouts started under it)."""
    assert CASES["algorithm"] == 1
    assert 1 in ALGORITHMS
    assert ALGORITHM_VERSION == 2  # what new rollouts get (tests/test_routing_v2.py)
    assert len(CASES["vectors"]) >= 40


@pytest.mark.parametrize("vector", CASES["vectors"], ids=lambda v: repr(v["key"]))
def test_code_reproduces_golden_vectors(vector: dict[str, object]) -> None:
    """compute_request_hash, Salt.from_text and bucket_of give exactly the checked-in numbers."""
    salt = Salt.from_text(str(vector["salt"]))
    assert (salt.multiplier, salt.offset) == (vector["multiplier"], vector["offset"])
    if vector["key"] is not None:
        assert compute_request_hash(vector["key"]) == vector["request_hash"]
    assert bucket_of(int(str(vector["request_hash"])), salt) == vector["bucket"]
    assert salt.bucket(int(str(vector["request_hash"]))) == vector["bucket"]


@pytest.mark.parametrize("vector", CASES["vectors"], ids=lambda v: repr(v["key"]))
def test_spec_reimplementation_reproduces_golden_vectors(vector: dict[str, object]) -> None:
    """The independent implementation of docs/routing.md agrees with the golden vectors."""
    if vector["key"] is not None:
        assert spec_request_hash(str(vector["key"])) == vector["request_hash"]
    assert spec_salt(str(vector["salt"])) == (vector["multiplier"], vector["offset"])
    assert spec_bucket(int(str(vector["request_hash"])), str(vector["salt"])) == vector["bucket"]


@pytest.mark.parametrize("row", CASES["multipart"], ids=lambda r: repr(r["parts"]))
def test_multipart_keys_match_golden_vectors(row: dict[str, object]) -> None:
    """Several key parts are str()-joined with 0x1F before hashing."""
    parts = list(row["parts"])  # type: ignore[call-overload]
    assert compute_request_hash(*parts) == row["request_hash"]
    assert spec_request_hash("\x1f".join(map(str, parts))) == row["request_hash"]


@pytest.mark.parametrize("row", CASES["limits"], ids=lambda r: f"{r['salt']}-{r['share_bp']}")
def test_limits_match_golden_vectors(row: dict[str, object]) -> None:
    """Salt.limit gives the checked-in 64-bit bounds, and the spec formula agrees."""
    share_bp = int(str(row["share_bp"]))
    assert Salt.from_text(str(row["salt"])).limit(share_bp) == row["limit"]
    assert spec_limit(share_bp) == row["limit"]


@given(
    request_hash=st.integers(0, 2**32 - 1),
    salt_text=st.text(max_size=30),
    share_bp=st.integers(-5, 10_005),
)
def test_limit_is_equivalent_to_bucket_below_share(request_hash: int, salt_text: str, share_bp: int) -> None:
    """The hot path's ``mixed64 < limit`` decides exactly as ``bucket < share``."""
    salt = Salt.from_text(salt_text)
    mixed64 = (salt.multiplier * request_hash + salt.offset) % 2**64
    assert (mixed64 < salt.limit(share_bp)) == (bucket_of(request_hash, salt) < share_bp)
    assert bucket_of(request_hash, salt) == spec_bucket(request_hash, salt_text)


@given(st.text(max_size=40))
def test_request_hash_is_unsigned_32_bit(key: str) -> None:
    """The request hash is the unsigned murmur3 (no abs() of the signed hash)."""
    value = compute_request_hash(key)
    assert 0 <= value < 2**32
    assert value == spec_request_hash(key)
    signed = mmh3.hash(key, 0)
    if signed < 0:
        assert value != abs(signed)


# --- guarantees on a live manager -----------------------------------------------------------------


def _manager_with_stable() -> tuple[DeploymentManager, str]:
    manager = DeploymentManager()
    stable = manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "test")
    manager.activate_deployment(stable)
    return manager, stable


@functools.cache
def _hashes(seed: int) -> list[int]:
    """KEYS' request hashes under a rollout's seed (0: algorithm 1, ``HASHES``)."""
    return [hash_key(k, seed) or 0 for k in KEYS]


def _candidate_share(manager: DeploymentManager, candidate: str) -> tuple[float, set[int]]:
    hashes = _hashes(manager.snapshot.seed)
    cohort = {i for i, h in enumerate(hashes) if manager.route_and_get_table(h).version_id == candidate}  # type: ignore[union-attr]
    return len(cohort) / len(hashes), cohort


def test_canary_shares_are_exact_and_cohorts_only_grow() -> None:
    """At each stage the candidate's share is within 1 point of the target and contains the previous cohort."""
    with freeze_time(START) as frozen:
        manager, _ = _manager_with_stable()
        candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 25, 50, 100], 60), "test")
        manager.activate_deployment(candidate)
        previous: set[int] = set()
        for target in (10, 25, 50):
            share, cohort = _candidate_share(manager, candidate)
            assert abs(share * 100 - target) <= 1.0, (target, share)
            assert previous <= cohort
            previous = cohort
            frozen.tick(60)
            assert manager.advance_rollout() is True
        share, cohort = _candidate_share(manager, candidate)
        assert share == 1.0
        assert manager.get_active_version_id() == candidate


def test_same_key_keeps_its_version_within_a_stage_and_across_advance() -> None:
    """Routing a key twice gives the same version; advance only ever moves keys stable -> candidate."""
    with freeze_time(START) as frozen:
        manager, stable = _manager_with_stable()
        candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 50, 100], 60), "test")
        manager.activate_deployment(candidate)
        keys = KEYS[:5_000]
        first = [manager.route(k).version_id for k in keys]  # type: ignore[union-attr]
        frozen.tick(30)
        assert manager.advance_rollout() is False  # not due: nothing moves
        assert [manager.route(k).version_id for k in keys] == first  # type: ignore[union-attr]
        frozen.tick(30)
        assert manager.advance_rollout() is True
        second = [manager.route(k).version_id for k in keys]  # type: ignore[union-attr]
        assert all(b == candidate for a, b in zip(first, second, strict=True) if a == candidate)
        assert {*first, *second} == {stable, candidate}


@pytest.fixture(scope="module")
def rollout_manager() -> DeploymentManager:
    """A manager with a stable version and a 50% canary in progress."""
    manager, _ = _manager_with_stable()
    candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([50, 100], 60), "test")
    manager.activate_deployment(candidate)
    return manager


@given(key=st.text(max_size=24))
def test_route_hash_route_and_engine_agree(rollout_manager: DeploymentManager, key: str) -> None:
    """route(k), route_and_get_table(hash of k under the rollout's seed) and RuleEngine.evaluate(key=k) agree."""
    manager = rollout_manager
    engine = RuleEngine(manager)
    by_key = manager.route(key)
    request_hash = hash_key(key, manager.snapshot.seed)
    assert request_hash is not None
    by_hash = manager.route_and_get_table(request_hash)
    assert by_key is by_hash
    assert by_key is not None
    assert engine.evaluate({"x": 1}, key=key).version_id == by_key.version_id
    assert engine.evaluate({"x": 1, "user_id": key}).version_id == by_key.version_id


def test_engine_routes_on_user_id_and_keyless_events_go_to_stable(rollout_manager: DeploymentManager) -> None:
    """RuleEngine's default key is event['user_id']; an event with no key is served by the stable version."""
    manager = rollout_manager
    engine = RuleEngine(manager)
    stable = manager.get_active_version_id()
    assert {engine.evaluate({"x": 1}).version_id for _ in range(50)} == {stable}
    versions = {engine.evaluate({"x": 1, "user_id": k}).version_id for k in KEYS[:200]}
    assert len(versions) == 2


def test_two_rollouts_at_the_same_share_pick_different_cohorts() -> None:
    """Two 10% canaries (different salts) overlap in about 1% of keys, not in their whole cohort."""
    manager, _ = _manager_with_stable()
    cohorts = []
    for version in ("2.0.0", "3.0.0"):
        candidate = manager.prepare_deployment(mini_bundle(version), Canary([10, 100], 60), "test")
        manager.activate_deployment(candidate)
        share, cohort = _candidate_share(manager, candidate)
        assert abs(share - 0.10) <= 0.01
        cohorts.append(cohort)
        manager.rollback()
    overlap = len(cohorts[0] & cohorts[1]) / len(HASHES)
    assert abs(overlap - 0.01) <= 0.003, overlap  # share squared: independent cohorts
    assert len(cohorts[0] & cohorts[1]) < 0.2 * len(cohorts[0])


def test_same_bundle_prepared_twice_gets_a_different_salt() -> None:
    """Re-rolling out the same bundle (a new version id) picks a new cohort."""
    manager, _ = _manager_with_stable()
    cohorts = []
    for _ in range(2):
        candidate = manager.prepare_deployment(mini_bundle("2.0.0"), Canary([10, 100], 60), "test")
        manager.activate_deployment(candidate)
        cohorts.append(_candidate_share(manager, candidate)[1])
        manager.rollback()
    assert len(cohorts[0] & cohorts[1]) < 0.2 * len(cohorts[0])


@pytest.mark.parametrize("ratio", [0.5, 0.7, 0.1])
def test_ab_split_ratio_is_a_share(ratio: float) -> None:
    """split_ratio is the share of A (the stable version), within 1 point over 100k keys."""
    manager, stable = _manager_with_stable()
    b = manager.prepare_deployment(mini_bundle("2.0.0"), ABTest(split_ratio=ratio), "test")
    manager.activate_deployment(b)
    share_b, _ = _candidate_share(manager, b)
    assert abs((1 - share_b) - ratio) <= 0.01
    assert manager.get_deployment_info(stable).current_percentage == pytest.approx(ratio * 100)  # type: ignore[union-attr]
    assert manager.get_deployment_info(b).current_percentage == pytest.approx((1 - ratio) * 100)  # type: ignore[union-attr]


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
def test_route_and_get_table_is_none_only_before_the_first_activation(hashes: list[int]) -> None:
    """None before any activation; afterwards a table for every hash, through rollouts and rollbacks."""
    manager = DeploymentManager()
    assert all(manager.route_and_get_table(h) is None for h in hashes)
    assert manager.get_active_table() is None
    first = manager.prepare_deployment(mini_bundle("1.0.0"), BlueGreen(), "test")
    assert all(manager.route_and_get_table(h) is None for h in hashes)  # staging serves nothing
    manager.activate_deployment(first)
    steps = [
        lambda: manager.activate_deployment(manager.prepare_deployment(mini_bundle("2.0.0"), Canary([30, 100]))),
        lambda: manager.rollback(),
        lambda: manager.activate_deployment(manager.prepare_deployment(mini_bundle("3.0.0"), BlueGreen())),
        lambda: manager.rollback(),
    ]
    for step in steps:
        step()
        assert all(manager.route_and_get_table(h) is not None for h in hashes)
