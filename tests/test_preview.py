"""preview: per stage, exactly the events and keys routed to a staged version, against the routing spec."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import mmh3
import pytest
from click.testing import CliRunner, Result

from rule_engine import ABTest, Canary, DeploymentManager, RuleTable, load_bundle
from rule_engine.cli import cli
from rule_engine.cli.demo import make_event

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
V1, V2, V3 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2", "v3-broken"))
RECORDED = ROOT / "tests" / "cases" / "events" / "gateway.jsonl"


# --- the routing algorithm, re-implemented from docs/routing.md ("Reference implementation") ---------


def request_hash(key: str) -> int:
    return mmh3.hash(key.encode("utf-8"), 0) & 0xFFFF_FFFF  # signed -> unsigned, never abs()


def spec_bucket(request_hash: int, salt_text: str) -> int:
    d = hashlib.sha256(salt_text.encode("utf-8")).digest()
    a = int.from_bytes(d[0:8], "big") | 1
    b = int.from_bytes(d[8:16], "big")
    mixed = ((a * request_hash + b) % 2**64) >> 32
    return (mixed * 10_000) >> 32


def spec_bucket_v2(key: str, salt_text: str) -> int:
    """Algorithm 2 (what a new rollout routes by): the salt's first 4 sha256 bytes seed murmur3."""
    seed = int.from_bytes(hashlib.sha256(salt_text.encode("utf-8")).digest()[0:4], "big")
    return ((mmh3.hash(key.encode("utf-8"), seed) & 0xFFFF_FFFF) * 10_000) >> 32


def test_the_reimplementation_reproduces_the_documented_example() -> None:
    """The worked example of docs/routing.md, so the expectations below rest on the spec."""
    assert request_hash("user-1") == 4171401059
    assert spec_bucket(4171401059, "gateway-access@1.0.0+0123abcd.1") == 578
    vector = json.loads((ROOT / "tests" / "cases" / "routing_v2.json").read_text())["vectors"][0]
    assert spec_bucket_v2(vector["key"], vector["salt"]) == vector["bucket"]


def expected_stages(
    candidate: RuleTable,
    baseline: RuleTable,
    salt: str,
    records: list[dict[str, Any]],
    stages: list[float],
    algorithm: int = 2,
) -> list[dict[str, Any]]:
    """Per stage: events, distinct keys, changed events and keys, candidate errors (independent count).

    ``algorithm`` is the rollout's: 2 for a staged version (what activate stamps a new rollout with).
    """
    rows: list[dict[str, Any]] = []
    for percent in stages:
        share = round(percent * 100)
        sent_keys: set[str] = set()
        changed_keys: set[str] = set()
        events = changed = errors = 0
        for record in records:
            key = record.get("key")
            if key is None:
                continue
            text = key if isinstance(key, str) else str(key)
            bucket = spec_bucket(request_hash(text), salt) if algorithm == 1 else spec_bucket_v2(text, salt)
            if bucket >= share:
                continue
            events += 1
            sent_keys.add(json.dumps(key))
            try:
                after = candidate.evaluate(record["event"]).decision
            except Exception:
                errors += 1
                continue
            try:
                before = baseline.evaluate(record["event"]).decision
            except Exception:
                before = baseline.error_decision("x").decision
            if after != before:
                changed += 1
                changed_keys.add(json.dumps(key))
        rows.append(
            {
                "percent": percent,
                "share_bp": share,
                "events": events,
                "keys": len(sent_keys),
                "changed_events": changed,
                "changed_keys": len(changed_keys),
                "errors": errors,
            }
        )
    return rows


@pytest.fixture
def staged(tmp_path: Path) -> tuple[str, str, str]:
    """A store with gateway v1 active and gateway-v3-broken prepared (staged) as a 5/20/60/100 canary."""
    store = f"sqlite:///{tmp_path / 'state.db'}"
    manager = DeploymentManager.open(store, follow=False)
    try:
        v1 = manager.prepare_deployment(Path(V1), deployed_by="test")
        manager.activate_deployment(v1, actor="test")
        v3 = manager.prepare_deployment(Path(V3), Canary((5, 20, 60, 100)), deployed_by="test")
    finally:
        manager.close()
    return store, v1, v3


def traffic(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rng = random.Random(5)
    records: list[dict[str, Any]] = []
    for i in range(4000):
        event, key = make_event(rng)
        if i % 10 == 0:
            records.append({"event": event})  # no key: never sent to the candidate
        elif i % 10 == 1:
            records.append({"event": event, "key": rng.randrange(100)})  # a non-string key
        else:
            records.append({"event": event, "key": key})
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path, records


def invoke(store: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", store, *args])


def assert_previewed_as_the_spec(store: str, v2: str, tmp_path: Path, stages: list[float], algorithm: int = 2) -> None:
    """`rule-engine preview` of gateway v2 (against v1) counts what the spec routes under ``algorithm``."""
    path, records = traffic(tmp_path)
    result = invoke(store, "preview", v2, "--events", str(path), "--json")
    assert result.exit_code == 0, result.output
    tables = RuleTable.from_bundle(load_bundle(V2)), RuleTable.from_bundle(load_bundle(V1))
    expected = expected_stages(*tables, v2, records, stages, algorithm)
    assert json.loads(result.stdout)["stages"] == expected


def test_each_stage_counts_exactly_what_the_router_sends(staged: tuple[str, str, str], tmp_path: Path) -> None:
    """Default stages are the version's own; events, keys, changes and errors per stage match the spec."""
    store, v1, v3 = staged
    path, records = traffic(tmp_path)
    result = invoke(store, "preview", v3, "--events", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = expected_stages(
        RuleTable.from_bundle(load_bundle(V3)), RuleTable.from_bundle(load_bundle(V1)), v3, records, [5, 20, 60, 100]
    )
    assert data["stages"] == expected
    assert data["salt"] == v3
    assert data["baseline"] == v1
    assert data["events"] == 4000
    assert data["keyless_events"] == 400
    assert data["stages"][-1]["events"] == 3600  # at 100% every keyed event goes to the candidate
    assert 0 < data["stages"][0]["events"] < data["stages"][1]["events"] < data["stages"][2]["events"]
    assert data["stages"][-1]["errors"] > 0  # api_gateway's string session.age_secs


def test_stages_and_baseline_can_be_given(staged: tuple[str, str, str], tmp_path: Path) -> None:
    """--stages and --against override the version's stages and the active version."""
    store, _, v3 = staged
    path, records = traffic(tmp_path)
    result = invoke(store, "preview", v3, "--events", str(path), "--stages", "1,33.33,100", "--against", V2, "--json")
    assert result.exit_code == 0, result.output
    expected = expected_stages(
        RuleTable.from_bundle(load_bundle(V3)), RuleTable.from_bundle(load_bundle(V2)), v3, records, [1, 33.33, 100]
    )
    assert json.loads(result.stdout)["stages"] == expected


def test_a_dotted_key_field_routes_plain_events(staged: tuple[str, str, str]) -> None:
    """--key-field user.id routes the recorded gateway events (they carry no 'key') by their user id."""
    store, _, v3 = staged
    result = invoke(store, "preview", v3, "--events", str(RECORDED), "--key-field", "user.id", "--json")
    assert result.exit_code == 0, result.output
    events = [json.loads(line)["event"] for line in RECORDED.read_text(encoding="utf-8").splitlines()]
    records = [{"event": e, "key": e.get("user", {}).get("id")} for e in events]
    expected = expected_stages(
        RuleTable.from_bundle(load_bundle(V3)), RuleTable.from_bundle(load_bundle(V1)), v3, records, [5, 20, 60, 100]
    )
    data = json.loads(result.stdout)
    assert data["stages"] == expected
    assert data["keyed_events"] == sum(r["key"] is not None for r in records)


def test_human_output_shows_one_line_per_stage(staged: tuple[str, str, str], tmp_path: Path) -> None:
    """Without --json: a table with each stage's percentage."""
    store, _, v3 = staged
    path, _ = traffic(tmp_path)
    result = invoke(store, "preview", v3, "--events", str(path))
    assert result.exit_code == 0, result.output
    assert "400 events have no routing key" in result.stdout
    for stage in ("5%", "20%", "60%", "100%"):
        assert any(line.strip().startswith(stage) for line in result.stdout.splitlines())


@pytest.mark.parametrize("stages", ["0,50", "10,abc", "150", "12.345"])
def test_bad_stages_are_a_usage_error(staged: tuple[str, str, str], stages: str) -> None:
    """Stages outside (0, 100] or with more than two decimals: exit 2, one error line."""
    store, _, v3 = staged
    result = invoke(store, "preview", v3, "--events", str(RECORDED), "--stages", stages)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1


def test_an_unknown_version_is_one_error_line(staged: tuple[str, str, str]) -> None:
    """A version id the store does not know: exit 1 and a hint."""
    store, _, _ = staged
    result = invoke(store, "preview", "nope@1", "--events", str(RECORDED))
    assert result.exit_code == 1
    assert result.stderr == "error: Version not found: 'nope@1' (see 'rule-engine status')\n"


def test_an_ab_test_version_previews_its_share(tmp_path: Path) -> None:
    """A version prepared as an A/B test: the default stage is B's share (1 - split_ratio)."""
    store = f"sqlite:///{tmp_path / 'state.db'}"
    manager = DeploymentManager.open(store, follow=False)
    try:
        v1 = manager.prepare_deployment(Path(V1), deployed_by="test")
        manager.activate_deployment(v1, actor="test")
        v2 = manager.prepare_deployment(Path(V2), ABTest(split_ratio=0.7), deployed_by="test")
    finally:
        manager.close()
    assert_previewed_as_the_spec(store, v2, tmp_path, [30.0])


@pytest.mark.parametrize("algorithm", [1, 2])
def test_a_running_rollout_is_previewed_by_its_own_algorithm(tmp_path: Path, algorithm: int) -> None:
    """A rollout stored under algorithm 1 (started before v2) is previewed, and routed, by v1; a new one by v2."""
    from dataclasses import replace

    store = f"sqlite:///{tmp_path / 'state.db'}"
    manager = DeploymentManager.open(store, follow=False)
    try:
        v1 = manager.prepare_deployment(Path(V1), deployed_by="test")
        manager.activate_deployment(v1, actor="test")
        v2 = manager.prepare_deployment(Path(V2), Canary((30, 100)), deployed_by="test")
        manager.activate_deployment(v2, actor="test")
        state = manager.store.load()
        assert state.rollout is not None
        assert state.rollout.algorithm == 2
        if algorithm == 1:  # as a store written before v2 holds it
            manager.store.commit(state.revision, replace(state, rollout=replace(state.rollout, algorithm=1)))
    finally:
        manager.close()
    reopened = DeploymentManager.open(store, follow=False)
    try:
        assert reopened.state.rollout is not None
        assert reopened.state.rollout.algorithm == algorithm
        for i in range(300):  # the live router agrees with the spec of the stored algorithm
            key = f"user-{i}"
            bucket = spec_bucket(request_hash(key), v2) if algorithm == 1 else spec_bucket_v2(key, v2)
            routed = reopened.route(key)
            assert routed is not None
            assert (routed.version_id == v2) == (bucket < 3000), key
    finally:
        reopened.close()
    assert_previewed_as_the_spec(store, v2, tmp_path, [30, 100], algorithm)
