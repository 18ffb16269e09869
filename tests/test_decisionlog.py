"""The decision log: sampled receipts of live decisions, masked, rotated; replayable; never raises or blocks."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rule_engine import Canary, DeploymentManager, RuleEngine, RuleTable, load_bundle
from rule_engine.analysis.events import read_events
from rule_engine.analysis.replay import replay
from rule_engine.cli.demo import make_event
from rule_engine.observability.decisions import (
    DecisionLogWriter,
    RotatingFile,
    mask_event,
    start_decision_log,
    stop_decision_log,
)
from rule_engine.serving.decisionlog import DecisionLog, LoggedDecision, Taps
from rule_engine.serving.routing import Salt
from rule_engine.serving.snapshot import ServingCell, ServingSnapshot

ROOT = Path(__file__).resolve().parent.parent
V1, V2, V3 = (str(ROOT / "bundles" / f"gateway-{n}.json") for n in ("v1", "v2", "v3-broken"))


def demo(n: int, seed: int = 3) -> list[tuple[dict[str, Any], str]]:
    rng = random.Random(seed)
    return [make_event(rng) for _ in range(n)]


def canary(candidate: str = V2, share: float = 50) -> DeploymentManager:
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(load_bundle(V1)))
    stages = (share, 100) if share < 100 else (100,)
    manager.activate_deployment(manager.prepare_deployment(load_bundle(candidate), Canary(stages, 60)))
    return manager


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class ListSink:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(text.splitlines())

    def close(self) -> None:
        pass


def test_off_by_default_nothing_is_tapped() -> None:
    """A manager's snapshots carry no taps until a log is started; evaluate answers as before."""
    manager = canary()
    assert manager.serving_cell.current.taps is None
    event, key = demo(1)[0]
    assert RuleEngine(manager).evaluate(event, key).decision in {"allow", "deny", "challenge", "throttle"}


def test_recorded_log_replays_with_exact_counts(tmp_path: Path) -> None:
    """Every decision logged at rate 1 is a receipt: replaying the log gives the counts of the original events."""
    manager = canary()
    path = tmp_path / "decisions.jsonl"
    writer = start_decision_log(manager, path, sample_rate=1.0, deployment="gateway")
    engine = RuleEngine(manager)
    traffic = demo(400)
    answers = [engine.evaluate(event, key) for event, key in traffic]
    stop_decision_log(manager, writer)
    assert manager.serving_cell.current.taps is None
    logged = records(path)
    assert [r["event"] for r in logged] == [event for event, _ in traffic]
    assert [r["key"] for r in logged] == [key for _, key in traffic]
    candidate = manager.get_rollout_status()
    assert candidate is not None
    for record, answer in zip(logged, answers, strict=True):
        assert record["deployment"] == "gateway"
        assert record["strategy"] == "canary"
        assert record["stage"] == candidate.stage
        assert (record["role"] == "candidate") == (record["bucket"] < 5000)
        assert record["version"] == (candidate.version_id if record["role"] == "candidate" else answer.version_id)
        if record["error"] is None:
            assert (record["decision"], record["rule_id"]) == (answer.decision, answer.rule_id)
    v1, v2 = RuleTable.from_bundle(load_bundle(V1)), RuleTable.from_bundle(load_bundle(V2))
    report = replay(v2, v1, read_events(str(path)))
    expected = sum(1 for event, _ in traffic if v1.evaluate(event).decision != v2.evaluate(event).decision)
    assert (report.events, report.changed) == (400, expected)
    assert expected > 0


def test_errors_are_always_kept(tmp_path: Path) -> None:
    """At sample rate 0 only the decisions with an error are logged, each with its error."""
    manager = canary(V3, share=100)
    log_path = tmp_path / "errors.jsonl"
    writer = start_decision_log(manager, log_path, sample_rate=0.0)
    engine = RuleEngine(manager)
    traffic = demo(300)
    for event, key in traffic:
        engine.evaluate(event, key)
    stop_decision_log(manager, writer)
    v3 = RuleTable.from_bundle(load_bundle(V3))
    failing = []
    for event, _ in traffic:
        try:
            v3.evaluate(event)
        except Exception:
            failing.append(event)
    logged = records(log_path)
    assert [r["event"] for r in logged] == failing
    assert failing
    serving = manager.get_active_version_id()
    assert all(
        r["error"] and r["version"] == serving and r["decision"] == v3.error_decision("x").decision for r in logged
    )


def test_mask_and_allow_follow_opa_paths() -> None:
    """``mask`` removes dotted paths (``*``: every member); ``allow`` keeps only its paths; the event is untouched."""
    event = {"user": {"email": "a@b", "id": "u1"}, "card": {"pan": "4111", "exp": "12/30"}, "amount": 5}
    assert mask_event(event, mask=["user.email", "card.*"]) == {"user": {"id": "u1"}, "card": {}, "amount": 5}
    assert mask_event(event, allow=["user.id", "amount"]) == {"user": {"id": "u1"}, "amount": 5}
    assert mask_event(event, allow=["user", "card.exp"], mask=["user.email"]) == {
        "user": {"id": "u1"},
        "card": {"exp": "12/30"},
    }
    assert mask_event(event, mask=["card", "card.pan"]) == {"user": {"email": "a@b", "id": "u1"}, "amount": 5}
    assert event["user"] == {"email": "a@b", "id": "u1"}
    assert event["card"]["pan"] == "4111"
    with pytest.raises(ValueError, match="dotted name"):
        mask_event(event, mask=["user..email"])


def test_keys_can_be_hashed_or_omitted() -> None:
    """``key_mode="hash"`` writes a salted ``key_hash`` and no ``key``; ``"omit"`` writes neither."""
    cell = ServingCell(ServingSnapshot(RuleTable.from_bundle(load_bundle(V1))))
    outputs = {}
    for mode, salt in (("hash", "s1"), ("hash", "s2"), ("omit", "")):
        log = DecisionLog(sample_rate=1.0)
        sink = ListSink()
        writer = DecisionLogWriter(log, sink, key_mode=mode, key_salt=salt, mask=["user.id"])
        cell.attach(Taps(log))
        for event, key in demo(3):
            RuleEngine(cell).evaluate(event, key)
        writer.flush()
        outputs[mode, salt] = [json.loads(line) for line in sink.lines]
    hashed, other_salt, omitted = outputs["hash", "s1"], outputs["hash", "s2"], outputs["omit", ""]
    assert all("key" not in r and len(r["key_hash"]) == 32 for r in hashed)
    assert [r["key_hash"] for r in hashed] != [r["key_hash"] for r in other_salt]
    assert all("key" not in r and "key_hash" not in r and "id" not in r["event"]["user"] for r in omitted)
    with pytest.raises(ValueError, match="key_mode"):
        DecisionLogWriter(DecisionLog(), ListSink(), key_mode="clear")


def test_the_file_rotates_by_size(tmp_path: Path) -> None:
    """Past ``max_bytes`` the file moves to ``.1``, ``.1`` to ``.2``...; the oldest past ``backups`` is deleted."""
    path = tmp_path / "d.jsonl"
    sink = RotatingFile(path, max_bytes=100, backups=2)
    for i in range(10):
        sink.write(json.dumps({"n": i, "pad": "x" * 30}) + "\n")  # 41 bytes: two lines per file
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    kept = [
        json.loads(x)["n"]
        for name in ("d.jsonl.2", "d.jsonl.1", "d.jsonl")
        for x in (tmp_path / name).read_text().splitlines()
    ]
    assert kept == [4, 5, 6, 7, 8, 9]
    assert all((tmp_path / name).stat().st_size <= 100 for name in files)


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    """With nobody consuming, offers past ``max_queue`` return at once and are counted as dropped."""
    log = DecisionLog(sample_rate=1.0, max_queue=10)
    cell = ServingCell(ServingSnapshot(RuleTable.from_bundle(load_bundle(V1))))
    cell.attach(Taps(log))
    engine = RuleEngine(cell)
    for event, key in demo(50):
        engine.evaluate(event, key)
    assert (log.sampled, log.dropped, log.pending) == (50, 40, 10)


def test_the_cell_keeps_its_taps_across_publishes() -> None:
    """A log attached to a manager's cell is on every snapshot it publishes later, until stopped."""
    manager = DeploymentManager()
    log = DecisionLog(sample_rate=1.0)
    manager.serving_cell.attach(Taps(log))
    manager.activate_deployment(manager.prepare_deployment(load_bundle(V1)))
    manager.activate_deployment(manager.prepare_deployment(load_bundle(V2)))
    assert manager.serving_cell.current.taps is not None
    assert manager.serving_cell.current.taps.log is log
    manager.serving_cell.attach(None)
    assert manager.serving_cell.current.taps is None


class _Hostile(dict[str, Any]):
    """An event whose reads raise once the table has read it (a caller's odd mapping)."""

    def get(self, *args: Any) -> Any:
        raise RuntimeError("no reads")


class _FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    def write(self, text: str) -> None:
        self.calls += 1
        raise OSError("disk full")

    def close(self) -> None:
        raise OSError("still full")


class _SlowSink(ListSink):
    """Blocks every write until released: the slowest sink there is."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> None:
        self.release.wait(5)
        super().write(text)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)
_events = st.one_of(
    st.dictionaries(st.sampled_from(["agent_id", "flow_id", "user_id", "user", "risk_score"]), _values, max_size=5),
    st.builds(lambda d: _Hostile(d), st.dictionaries(st.text(max_size=4), _values, max_size=3)),
    st.just({"agent_id": "api_gateway", "flow_id": "login", "session": {"age_secs": object()}}),
    st.integers(),
    st.none(),
)
_keys = st.none() | st.text(max_size=6) | st.integers() | st.just("\ud800") | st.just(object())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(_events, _keys), max_size=40), failing=st.booleans(), rate=st.sampled_from([0, 0.5, 1]))
def test_fuzz_the_hot_path_never_raises_nor_blocks(
    tmp_path: Path, batch: list[tuple[Any, Any]], failing: bool, rate: float
) -> None:
    """Whatever the events and keys, with a failing or a blocked sink: evaluate answers, every record is counted."""
    manager = canary(V3)
    log = DecisionLog(sample_rate=rate, max_queue=8)
    sink: Any = _FailingSink() if failing else _SlowSink()
    writer = DecisionLogWriter(log, sink, mask=["user.email", "card.*"], key_mode="hash")
    manager.serving_cell.attach(Taps(log))
    writer.start()
    engine = RuleEngine(manager)
    for event, key in batch:  # a blocked writer holds at most one batch; the rest is dropped, never waited for
        assert engine.evaluate(event, key) is not None
    if not failing:
        sink.release.set()
    writer.stop()
    stats = writer.stats()
    assert stats["written"] + stats["write_errors"] + stats["dropped"] == stats["sampled"]
    assert stats["pending"] == 0
    if failing:
        assert stats["written"] == 0
    else:
        assert len(sink.lines) == stats["written"]
        for line in sink.lines:
            assert "key" not in json.loads(line)


def test_a_broken_tap_never_fails_a_request() -> None:
    """A log whose queue raises on put (a MemoryError, say) leaves the answer as it was."""

    class Broken(DecisionLog):
        def put(self, item: LoggedDecision) -> None:
            raise MemoryError

    cell = ServingCell(ServingSnapshot(RuleTable.from_bundle(load_bundle(V1))))
    event, key = demo(1)[0]
    expected = RuleEngine(cell).evaluate(event, key)
    cell.attach(Taps(Broken(sample_rate=1.0)))
    assert RuleEngine(cell).evaluate(event, key) is expected


def _logged_traffic(cell: ServingCell, *, sample_rate: float, n: int = 300) -> list[dict[str, Any]]:
    """The records a log at ``sample_rate`` on ``cell`` writes for ``n`` demo events evaluated there."""
    log, sink = DecisionLog(sample_rate=sample_rate), ListSink()
    writer = DecisionLogWriter(log, sink)
    cell.attach(Taps(log))
    engine = RuleEngine(cell)
    for event, key in demo(n):
        engine.evaluate(event, key)
    writer.flush()
    return [json.loads(line) for line in sink.lines]


@pytest.mark.parametrize("algorithm", [1, 2])
def test_the_logged_bucket_is_the_one_the_request_was_routed_by(algorithm: int) -> None:
    """Under either routing algorithm, a record's bucket is below the share exactly when the candidate served it."""
    v1, v2 = RuleTable.from_bundle(load_bundle(V1)), RuleTable.from_bundle(load_bundle(V2))
    salt = Salt.from_text("rollout-7", algorithm)
    logged = _logged_traffic(ServingCell(ServingSnapshot.build(v1, v2, salt, 3000)), sample_rate=1.0)
    assert len(logged) == 300
    assert all((r["role"] == "candidate") == (r["bucket"] < 3000) for r in logged)
    assert all(r["bucket"] == salt.bucket(salt.request_hash(r["key"])) for r in logged)
    assert 0 < sum(r["role"] == "candidate" for r in logged) < 300


def test_an_error_on_an_untimed_call_is_logged_with_no_latency() -> None:
    """The engine times one call in 16; an error on another is still logged, with ``latency_us`` null."""
    logged = _logged_traffic(canary(V3, share=100).serving_cell, sample_rate=0.0)
    assert logged
    assert all(r["error"] for r in logged)
    untimed = [r for r in logged if r["latency_us"] is None]
    timed = [r for r in logged if r["latency_us"] is not None]
    assert untimed  # most errors fall on untimed calls
    assert all(r["latency_us"] >= 0 for r in timed)
    json.dumps(logged, allow_nan=False)  # every record stays valid JSON
