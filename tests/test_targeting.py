"""Targeting: scoped rollouts (agents, flows) and pinned keys, from the strategy to the served decision."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st

from rule_engine import (
    ABTest,
    BlueGreen,
    Canary,
    DeploymentError,
    DeploymentManager,
    InvalidStrategyError,
    InvalidTransitionError,
    RuleEngine,
    RuleTable,
    Scheduled,
    VersionNotFoundError,
    parse_bundle,
)
from rule_engine.control.records import ControlState
from rule_engine.control.strategies import MAX_SCOPE_NAME, MAX_SCOPE_NAMES, strategy_from_dict
from rule_engine.control.targeting import MAX_PIN_KEY, MAX_PINS
from rule_engine.serving.routing import Salt, bucket_of, compute_request_hash, hash_key
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot
from rule_engine.serving.targeting import Targeting, route_hash, route_table
from tests._support_health import START, THRESHOLDS, bundle

CASES = json.loads((Path(__file__).parent / "cases" / "routing_scope_v1.json").read_text(encoding="utf-8"))
IN_SCOPE = {"agent_id": "api_gateway", "flow_id": "login"}


def _table(version_id: str) -> RuleTable:
    return RuleTable.from_bundle(parse_bundle(json.dumps(bundle("1.0.0")))).restamped(version_id)


STABLE, CANDIDATE = _table("stable"), _table("candidate")


def _snapshot(
    salt: str,
    share_bp: int,
    agents: tuple[str, ...] = (),
    flows: tuple[str, ...] = (),
    pins: Mapping[str, str] | None = None,
) -> ServingSnapshot:
    tables = {"stable": STABLE, "candidate": CANDIDATE}
    pinned = {k: tables[v] for k, v in (pins or {}).items()}
    targeting = Targeting.build(agents, flows, pinned)
    return ServingSnapshot.build(STABLE, CANDIDATE, Salt.from_text(salt), share_bp, targeting=targeting)


def _served(snapshot: ServingSnapshot, event: Any, key: Any = None) -> str | None:
    return RuleEngine(ServingCell(snapshot)).evaluate(event, key=key).version_id


def _scoped_canary(manager: DeploymentManager, **scope: Any) -> str:
    candidate = manager.prepare_deployment(bundle("2.0.0"), Canary((10, 25, 50, 100), 60, **scope))
    manager.activate_deployment(candidate)
    return candidate


# --- the strategy's scope ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "names",
    [
        "api_gateway",
        None,
        [""],
        ["  "],
        [1],
        ["x" * (MAX_SCOPE_NAME + 1)],
        [f"a{i}" for i in range(MAX_SCOPE_NAMES + 1)],
    ],
)
def test_a_bad_scope_is_refused(names: Any) -> None:
    """A bare string, a blank or non-text name, a name too long or too many names: InvalidStrategyError."""
    with pytest.raises(InvalidStrategyError):
        Canary(agents=names)
    with pytest.raises(InvalidStrategyError):
        ABTest(flows=names)


def test_a_scope_at_its_limits_is_accepted_sorted_and_without_duplicates() -> None:
    """MAX_SCOPE_NAMES names of MAX_SCOPE_NAME characters are fine; the scope is kept sorted and unique."""
    names = [f"{i:03d}".ljust(MAX_SCOPE_NAME, "x") for i in range(MAX_SCOPE_NAMES)]
    assert Canary(agents=reversed(names)).agents == tuple(names)
    assert ABTest(flows=["login", "checkout", "login"]).flows == ("checkout", "login")


def test_the_scope_is_stored_and_read_back() -> None:
    """to_dict/from_dict keep the scope; an unscoped strategy's stored form has no scope keys (as before)."""
    for strategy in (Canary(agents=["api_gateway"], flows=["login"]), ABTest(0.5, 60, flows=("checkout",))):
        assert strategy_from_dict(json.loads(json.dumps(strategy.to_dict()))) == strategy
    assert "agents" not in Canary().to_dict()
    assert "flows" not in ABTest().to_dict()
    old = {"kind": "canary", "stages": [50, 100], "stage_duration_secs": 10.0}  # written before scopes existed
    assert strategy_from_dict(old).scope() == ((), ())


def test_only_strategies_that_split_traffic_can_be_scoped() -> None:
    """A blue-green or scheduled deployment has no candidate to scope: refused; an empty scope changes nothing."""
    with pytest.raises(InvalidStrategyError, match="canary or A/B test only"):
        BlueGreen().scoped(agents=["api_gateway"])
    with pytest.raises(InvalidStrategyError):
        Scheduled(1_900_000_000).scoped(flows=["login"])
    plain = BlueGreen()
    assert plain.scoped() is plain
    assert Canary().scoped(["b", "a"], ["login"]) == Canary(agents=("a", "b"), flows=("login",))
    assert "only agents a, b; flows login" in Canary().scoped(["b", "a"], ["login"]).describe()


# --- routing: the golden vectors and the guarantees ------------------------------------------------


def test_scope_golden_vectors() -> None:
    """Every (agent, flow, key) case of routing_scope_v1.json is served by the version it names."""
    checked = 0
    for rollout in CASES["rollouts"]:
        snapshot = _snapshot(
            rollout["salt"], rollout["share_bp"], tuple(rollout["agents"]), tuple(rollout["flows"]), rollout["pins"]
        )
        for case in rollout["cases"]:
            event, key = case["event"], case["key"]
            assert _served(snapshot, event, key) == case["served_by"], case
            route = route_table(snapshot, key, event)
            assert route is not None
            assert route.version_id == case["served_by"], case
            checked += 1
    assert checked == sum(len(r["cases"]) for r in CASES["rollouts"]) > 50


def test_the_vectors_agree_with_an_independent_reading_of_the_spec() -> None:
    """The vectors follow docs/routing.md: scope first, then pins, then bucket < share (v1 hash)."""
    for rollout in CASES["rollouts"]:
        salt = Salt.from_text(rollout["salt"])
        for case in rollout["cases"]:
            event, key = case["event"], case["key"]
            agent, flow = event.get("agent_id"), event.get("flow_id")
            in_scope = (not rollout["agents"] or (type(agent) is str and agent in rollout["agents"])) and (
                not rollout["flows"] or (type(flow) is str and flow in rollout["flows"])
            )
            text = key if type(key) is str else str(key)
            if not in_scope:
                expected = "stable"
            elif text in rollout["pins"]:
                expected = rollout["pins"][text]
            else:
                expected = "candidate" if bucket_of(compute_request_hash(key), salt) < rollout["share_bp"] else "stable"
            assert expected == case["served_by"], case


_NAMES = st.sampled_from(["api_gateway", "mobile_app", "batch_job", "login", "checkout", "API_GATEWAY", ""])
_FIELD = st.one_of(
    _NAMES, st.text(max_size=8), st.integers(), st.none(), st.lists(_NAMES, max_size=2), st.floats(allow_nan=True)
)


@st.composite
def _events(draw: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"user_id": draw(st.one_of(st.text(max_size=12), st.integers(), st.none()))}
    for name in ("agent_id", "flow_id"):
        if draw(st.booleans()):
            event[name] = draw(_FIELD)
    return event


@given(
    event=_events(),
    share_bp=st.integers(1, 10_000),
    agents=st.lists(_NAMES.filter(bool), max_size=3),
    flows=st.lists(_NAMES.filter(bool), max_size=3),
    pinned=st.booleans(),
)
def test_a_scoped_canary_never_serves_an_out_of_scope_event_from_the_candidate(
    event: dict[str, Any], share_bp: int, agents: list[str], flows: list[str], pinned: bool
) -> None:
    """Whatever the event, its key and the share, an event outside the scope is served by stable; inside,
    it is routed exactly as an unscoped rollout routes it (same salt: sticky and monotonic)."""
    if not agents and not flows:
        agents = ["api_gateway"]
    key = event["user_id"]
    pins = {str(key): "candidate"} if pinned and key is not None else None
    snapshot = _snapshot("scope-property", share_bp, tuple(agents), tuple(flows), pins)
    agent, flow = event.get("agent_id"), event.get("flow_id")
    in_scope = (not agents or (type(agent) is str and agent in agents)) and (
        not flows or (type(flow) is str and flow in flows)
    )
    served = _served(snapshot, event)
    if not in_scope:
        assert served == "stable"
    elif pins:
        assert served == "candidate"
    else:
        unscoped = _snapshot("scope-property", share_bp)
        assert served == _served(unscoped, event)


def test_inside_the_scope_the_cohort_only_grows_with_the_share() -> None:
    """For in-scope events, a key in the candidate's cohort at one share is in it at every larger share."""
    keys = [f"user-{i}" for i in range(3000)]
    previous: set[str] = set()
    for share in (100, 1000, 2500, 5000, 10_000):
        snapshot = _snapshot("monotonic", share, ("api_gateway",), ("login",))
        cohort = {k for k in keys if _served(snapshot, {**IN_SCOPE, "user_id": k}) == "candidate"}
        assert previous <= cohort
        assert abs(len(cohort) / len(keys) - share / 10_000) < 0.03
        previous = cohort
    assert previous == set(keys)


def test_an_unscoped_rollout_without_pins_carries_no_targeting() -> None:
    """No scope and no pins: the snapshot's targeting is None, so routing pays one None-check."""
    assert Targeting.build((), (), None) is None
    assert Targeting.build((), (), {}) is None
    manager = DeploymentManager(thresholds=THRESHOLDS)
    manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
    manager.activate_deployment(manager.prepare_deployment(bundle("2.0.0"), Canary((10, 100), 60)))
    assert manager.snapshot.candidate is not None
    assert manager.snapshot.targeting is None


class _Raising(Mapping[str, Any]):
    """An event whose every read raises."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("no reads")

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("no reads")


def test_an_event_whose_reads_raise_is_served_by_stable_under_a_scope() -> None:
    """A hostile event never reaches the candidate and never makes evaluate or route raise."""
    snapshot = _snapshot("hostile", 10_000, ("api_gateway",))
    assert RuleEngine(ServingCell(snapshot)).evaluate(_Raising(), key="user-1").version_id == "stable"
    assert route_table(snapshot, "user-1", _Raising()) is STABLE
    assert route_table(snapshot, "user-1") is STABLE  # no event: as out of scope
    assert route_hash(snapshot, compute_request_hash("user-1")) is CANDIDATE  # the hash alone: everyone at 100%


# --- pinned keys through the manager ---------------------------------------------------------------


def _manager(**kwargs: Any) -> tuple[DeploymentManager, str]:
    manager = DeploymentManager(thresholds=THRESHOLDS, auto_rollback=False, **kwargs)
    stable = manager.prepare_deployment(bundle("1.0.0"))
    manager.activate_deployment(stable)
    return manager, stable


def test_a_pinned_key_stays_on_its_version_across_every_stage() -> None:
    """Keys pinned to the candidate and to stable stay there at 10, 25 and 50%, whatever their hash; the
    pins end when the canary completes."""
    with freeze_time(START) as clock:
        manager, stable = _manager()
        candidate = _scoped_canary(manager)
        to_candidate = [f"qa-{i}" for i in range(500)]
        to_stable = [f"vip-{i}" for i in range(500)]
        assert manager.pin_keys(to_candidate, candidate, actor="qa", reason="testing") == 500
        assert manager.pin_keys(to_stable, stable, actor="support") == 500
        engine = RuleEngine(manager)
        seed = manager.snapshot.seed  # the rollout's (algorithm 2): the hash route_and_get_table takes
        by_hash = {k: manager.route_and_get_table(hash_key(k, seed) or 0) for k in to_candidate + to_stable}
        assert {t.version_id for t in by_hash.values() if t is not None} == {stable, candidate}  # pins matter
        for stage in (10, 25, 50):
            status = manager.get_rollout_status()
            assert status is not None
            assert (status.percentage, status.pins) == (stage, 1000)
            assert {engine.evaluate({"user_id": k}).version_id for k in to_candidate} == {candidate}
            assert {engine.evaluate({"user_id": k}).version_id for k in to_stable} == {stable}
            clock.tick(61)
            assert manager.advance_rollout()
        assert manager.state.rollout is None
        assert {engine.evaluate({"user_id": k}).version_id for k in to_stable} == {candidate}


def test_pins_are_bounded_and_a_refusal_changes_nothing() -> None:
    """MAX_PINS keys may be pinned; one more is refused with DeploymentError and the state is untouched."""
    manager, stable = _manager()
    candidate = _scoped_canary(manager)
    keys = [f"k{i}" for i in range(MAX_PINS)]
    assert manager.pin_keys(keys, candidate) == MAX_PINS
    assert manager.pin_keys(keys[:10], candidate) == 0  # already pinned there: no change, no limit
    revision = manager.state.revision
    with pytest.raises(DeploymentError, match="at most 1,000 pinned keys"):
        manager.pin_keys(["one-more"], stable)
    assert manager.state.revision == revision
    assert manager.pin_keys(keys[:5], stable) == 5  # moving a pinned key does not count twice
    assert manager.route("k0") is manager.snapshot.stable


@pytest.mark.parametrize(
    "keys", ["qa-1", [], [""], [" "], [7], ["x" * (MAX_PIN_KEY + 1)], [f"k{i}" for i in range(MAX_PINS + 1)]]
)
def test_bad_keys_are_refused(keys: Any) -> None:
    """A bare string, no keys, a blank, non-text or too long key, too many keys: DeploymentError."""
    manager, _ = _manager()
    candidate = _scoped_canary(manager)
    with pytest.raises(DeploymentError):
        manager.pin_keys(keys, candidate)
    with pytest.raises(DeploymentError):
        manager.unpin_keys(keys)


def test_only_a_live_version_of_a_rollout_in_progress_takes_pins() -> None:
    """No rollout, an unknown version or one that is not stable or candidate: refused, naming what is allowed."""
    manager, stable = _manager()
    with pytest.raises(InvalidTransitionError, match="no rollout is in progress"):
        manager.pin_keys(["qa-1"], stable)
    with pytest.raises(InvalidTransitionError, match="no rollout is in progress"):
        manager.unpin_keys(["qa-1"])
    staged = manager.prepare_deployment(bundle("3.0.0"))
    candidate = _scoped_canary(manager)
    with pytest.raises(VersionNotFoundError):
        manager.pin_keys(["qa-1"], "nope")
    with pytest.raises(InvalidTransitionError, match=re.escape(f"pin to '{stable}' (stable) or '{candidate}'")):
        manager.pin_keys(["qa-1"], staged)


def test_pin_and_unpin_are_in_the_audit_trail() -> None:
    """Each pin names the version, the keys and the reason; unpin writes one entry per version it took keys from."""
    manager, stable = _manager()
    candidate = _scoped_canary(manager)
    manager.pin_keys(["qa-1", "qa-2"], candidate, actor="alice", reason="QA of the new rules")
    manager.pin_keys(["vip-1"], stable, actor="bob")
    assert manager.unpin_keys(["qa-1", "vip-1", "never-pinned"], actor="carol", reason="done") == 2
    entries = [e for e in manager.audit_log() if e.action in ("pin", "unpin")]
    assert [(e.action, e.version_id, e.actor) for e in entries] == [
        ("pin", candidate, "alice"),
        ("pin", stable, "bob"),
        ("unpin", candidate, "carol"),
        ("unpin", stable, "carol"),
    ]
    assert entries[0].reason == "pinned 2 key(s) to the candidate: qa-1, qa-2; QA of the new rules"
    assert entries[2].reason == "unpinned 1 key(s): qa-1; done"
    assert manager.unpin_keys(["never-pinned"]) == 0
    assert len(manager.audit_log()) == len(entries) + 4  # prepare x2, activate x2: nothing for a no-op


def test_pins_end_with_the_rollout() -> None:
    """A rollback ends the rollout and its pins; the next rollout starts with none."""
    manager, _stable = _manager()
    candidate = _scoped_canary(manager)
    manager.pin_keys(["qa-1"], candidate)
    manager.rollback()
    assert manager.state.rollout is None
    again = manager.prepare_deployment(bundle("2.0.1"), Canary((10, 100), 60))
    manager.activate_deployment(again)
    status = manager.get_rollout_status()
    assert status is not None
    assert status.pins == 0
    assert manager.snapshot.targeting is None


def test_scope_wins_over_a_pin_and_integer_keys_match_their_text() -> None:
    """A key pinned to the candidate gets stable outside the scope; an int key 42 is the pinned "42"."""
    manager, stable = _manager()
    candidate = _scoped_canary(manager, agents=["api_gateway"])
    manager.pin_keys(["42", "qa-1"], candidate)
    engine = RuleEngine(manager)
    assert engine.evaluate({**IN_SCOPE, "user_id": "qa-1"}).version_id == candidate
    assert engine.evaluate({"agent_id": "batch_job", "user_id": "qa-1"}).version_id == stable
    assert engine.evaluate(IN_SCOPE, key=42).version_id == candidate
    table = manager.route("qa-1", IN_SCOPE)
    assert table is not None
    assert table.version_id == candidate


def test_the_candidate_is_judged_on_its_scope_only() -> None:
    """The candidate counts only in-scope events (it sees no other); out-of-scope traffic is all stable's."""
    with freeze_time(START):
        manager, _stable = _manager()
        candidate = _scoped_canary(manager, flows=["checkout"])
        engine = RuleEngine(manager)
        for i in range(2000):
            engine.evaluate({"user_id": f"u{i}", "flow_id": "login" if i % 2 else "checkout"})
        manager.tick()
        served = manager.get_deployment_info(candidate)
        assert served is not None
        evaluations = served.health_metrics.total_evaluations
        in_scope_to_candidate = sum(
            1
            for i in range(0, 2000, 2)
            if manager.route_and_get_table(hash_key(f"u{i}", manager.snapshot.seed) or 0) is manager.snapshot.candidate
        )
        assert evaluations == in_scope_to_candidate > 0


# --- restart survival -------------------------------------------------------------------------------


def test_scope_and_pins_survive_a_restart(tmp_path: Path) -> None:
    """A scoped canary with pins, reopened from its SQLite store, serves and reports exactly the same."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    keys = [f"user-{i}" for i in range(300)]
    events = [{"agent_id": a, "flow_id": f} for a in ("api_gateway", "batch_job") for f in ("login", "search")]
    with DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS) as first:
        stable = first.prepare_deployment(bundle("1.0.0"))
        first.activate_deployment(stable)
        candidate = _scoped_canary(first, agents=["api_gateway"], flows=["login"])
        first.pin_keys(keys[:50], candidate, actor="qa")
        first.pin_keys(keys[50:60], stable, actor="qa")
        before = [(_version(first.route(k, e))) for k in keys for e in events]
        status = first.get_rollout_status()
        assert status is not None
        dumped = status.to_dict()
    with DeploymentManager.open(url, follow=False, thresholds=THRESHOLDS) as second:
        assert second.state.versions[candidate].strategy.scope() == (("api_gateway",), ("login",))
        assert second.state.rollout is not None
        assert len(second.state.rollout.pins) == 60
        assert [(_version(second.route(k, e))) for k in keys for e in events] == before
        again = second.get_rollout_status()
        assert again is not None
        assert again.to_dict()["scope"] == dumped["scope"] == {"agents": ["api_gateway"], "flows": ["login"]}
        assert again.to_dict()["pins"] == dumped["pins"] == 60
        assert ControlState.from_dict(second.state.to_dict()) == second.state
    assert {candidate, stable} >= set(before)
    assert before.count(candidate) >= 50  # the pinned keys, on the one in-scope event shape


def _version(table: RuleTable | None) -> str | None:
    return table.version_id if table is not None else None
