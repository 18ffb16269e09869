"""replay: both versions decide every recorded event; counts are exact; the gate exits 1 over R."""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from rule_engine import DeploymentManager, RuleTable, load_bundle
from rule_engine import parse_bundle as load_bundle_text
from rule_engine.analysis.check import scope_label
from rule_engine.analysis.events import EventsError, Recorded, read_events
from rule_engine.analysis.replay import ReplayGateRefused, replay, replay_gate
from rule_engine.cli import cli
from rule_engine.cli.demo import make_event

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "bundles"
V1, V2, V3 = (str(BUNDLES / f"gateway-{name}.json") for name in ("v1", "v2", "v3-broken"))
RECORDED = ROOT / "tests" / "cases" / "events" / "gateway.jsonl"


def table(path: str) -> RuleTable:
    return RuleTable.from_bundle(load_bundle(path))


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def demo_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        event, key = make_event(rng)
        records.append({"event": event, "key": key})
    return records


def outcome(t: RuleTable, event: dict[str, Any]) -> tuple[str, str | None, bool]:
    """Independent of replay: the decision string, rule id and whether the table raised."""
    try:
        d = t.evaluate(event)
    except Exception:
        return t.error_decision("x").decision, None, True
    return d.decision, d.rule_id, False


def expected_groups(cand: RuleTable, base: RuleTable, events: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    groups: Counter[tuple[str, ...]] = Counter()
    for event in events:
        before, after = outcome(base, event)[0], outcome(cand, event)[0]
        if before != after:
            groups[(event.get("agent_id"), event.get("flow_id"), before, after)] += 1
    return groups


def invoke(*args: str, store: str = "memory://", input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--store", store, *args], input=input)


def test_recorded_gateway_traffic_changes_exactly_as_recorded_v1_and_v2_answers_say() -> None:
    """The recorded events carry v1's and v2's answers: replay finds exactly those changes."""
    records = [json.loads(line) for line in RECORDED.read_text(encoding="utf-8").splitlines()]
    expected = Counter(
        (r["event"]["agent_id"], r["event"]["flow_id"], r["v1"]["decision"], r["v2"]["decision"])
        for r in records
        if r["v1"]["decision"] != r["v2"]["decision"]
    )
    report = replay(table(V2), table(V1), read_events(str(RECORDED)))
    assert report.events == len(records)
    assert report.changed == sum(expected.values())
    assert {(g.agent, g.flow, g.before, g.after): g.count for g in report.groups.values()} == dict(expected)
    assert report.errors == {
        "candidate": sum(r["v2"]["error"] for r in records),
        "baseline": sum(r["v1"]["error"] for r in records),
    }


def test_generated_traffic_counts_match_an_independent_computation(tmp_path: Path) -> None:
    """3,000 demo events, v2 against v1: groups, rules per side, errors and new errors are exact."""
    records = demo_records(3000)
    events = [r["event"] for r in records]
    cand, base = table(V3), table(V2)
    report = replay(cand, base, read_events(str(write_jsonl(tmp_path / "e.jsonl", records))))
    assert {(g.agent, g.flow, g.before, g.after): g.count for g in report.groups.values()} == dict(
        expected_groups(cand, base, events)
    )
    outcomes = [(outcome(base, e), outcome(cand, e)) for e in events]
    assert report.errors == {"baseline": sum(b[2] for b, _ in outcomes), "candidate": sum(c[2] for _, c in outcomes)}
    assert report.new_errors["candidate"] == sum(c[2] and not b[2] for b, c in outcomes)
    assert report.errors["candidate"] > 1000  # api_gateway sends session.age_secs as a string
    for group in report.groups.values():
        rules = Counter(
            (b[1] if not b[2] else "(error)") if b[1] or b[2] else "(default)"
            for (b, c), e in zip(outcomes, events, strict=True)
            if (e["agent_id"], e["flow_id"], b[0], c[0]) == (group.agent, group.flow, group.before, group.after)
        )
        assert group.from_rules == dict(rules)
        assert len(group.examples) <= 3
    assert report.rule_changed == sum(b[0] == c[0] and not b[2] and not c[2] and b[1] != c[1] for b, c in outcomes)


def test_gzip_stdin_and_plain_events_give_the_same_report(tmp_path: Path) -> None:
    """The same events as plain JSONL, gzip (found by magic bytes, any name) and on stdin."""
    records = demo_records(500, seed=3)
    plain = write_jsonl(tmp_path / "e.jsonl", records)
    zipped = tmp_path / "e.data"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    runs = [
        invoke("replay", str(plain), "--candidate", V2, "--against", V1, "--json"),
        invoke("replay", str(zipped), "--candidate", V2, "--against", V1, "--json"),
        invoke("replay", "-", "--candidate", V2, "--against", V1, "--json", input=gzip.compress(plain.read_bytes())),
        invoke("replay", "-", "--candidate", V2, "--against", V1, "--json", input=plain.read_bytes()),
    ]
    datas = []
    for result in runs:
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        for key in ("latency_ratio", "source", "candidate", "baseline"):
            data.pop(key)
        datas.append(data)
    assert all(d == datas[0] for d in datas)
    assert datas[0]["events"] == 500


def test_json_report_has_the_documented_keys(tmp_path: Path) -> None:
    """events, changed, changed_rate, errors {candidate, baseline}, groups with agent/flow/from/to/count/rules/examples."""
    result = invoke("replay", str(RECORDED), "--candidate", V3, "--against", V2, "--json", "--examples", "1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"events", "changed", "changed_rate", "errors", "groups"} <= data.keys()
    assert set(data["errors"]) == {"candidate", "baseline"}
    assert data["changed_rate"] == round(data["changed"] / data["events"], 6)
    for group in data["groups"]:
        assert {"agent", "flow", "from", "to", "count", "from_rules", "to_rules", "examples"} <= group.keys()
        assert len(group["examples"]) <= 1
        assert sum(group["from_rules"].values()) == group["count"] == sum(group["to_rules"].values())
    kinds = {(f["kind"], f["rule_id"], f["field"]) for f in data["check"]["findings"]}
    assert ("raises", "challenge-stale-session", "session.age_secs") in kinds  # check runs inside replay


def test_exit_status_gates_on_the_changed_rate() -> None:
    """exit 1 when changed_rate > R, 0 when it is <= R (6 of 36 change from v1 to v2)."""
    rate = 6 / 36
    over = invoke("replay", str(RECORDED), "--candidate", V2, "--against", V1, "--max-changed-rate", "0.1")
    assert over.exit_code == 1
    assert over.stderr.startswith("error: 16.67% of 36 events change decision, over --max-changed-rate 0.1")
    assert "Traceback" not in over.output
    at = invoke("replay", str(RECORDED), "--candidate", V2, "--against", V1, "--max-changed-rate", f"{rate:.17f}")
    assert at.exit_code == 0, at.output
    assert "PASS" in at.stdout
    assert invoke("replay", str(RECORDED), "--candidate", V2, "--against", V1).exit_code == 0


@pytest.mark.parametrize(
    "args",
    [
        ("--candidate", V2, "--against", V1, "--max-changed-rate", "1.5"),
        ("--candidate", V2, "--against", V1, "--examples", "100"),
        ("--against", V1),
        ("--candidate", V2),  # no --against and no active version in the store
    ],
)
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...]) -> None:
    """A bad option, a missing option, or no version to compare with: exit 2, one error line."""
    result = invoke("replay", str(RECORDED), *args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ")


def test_against_defaults_to_the_active_version_and_versions_work_by_id(tmp_path: Path) -> None:
    """With a store: --against is the active version; --candidate may be a stored version id."""
    store = f"sqlite:///{tmp_path / 'state.db'}"
    manager = DeploymentManager.open(store, follow=False)
    try:
        v1 = manager.prepare_deployment(Path(V1), deployed_by="test")
        manager.activate_deployment(v1, actor="test")
        v2 = manager.prepare_deployment(Path(V2), deployed_by="test")
    finally:
        manager.close()
    by_file = json.loads(invoke("replay", str(RECORDED), "--candidate", V2, "--json", store=store).stdout)
    by_id = json.loads(invoke("replay", str(RECORDED), "--candidate", v2, "--json", store=store).stdout)
    assert by_file["baseline"] == v1 == by_id["baseline"]
    assert by_id["candidate"] == v2
    assert by_file["changed"] == by_id["changed"] == 6
    missing = invoke("replay", str(RECORDED), "--candidate", "nope@1", store=store)
    assert missing.exit_code == 1
    assert "nope@1" in missing.stderr


def test_reader_accepts_records_and_plain_events_and_counts_bad_lines(tmp_path: Path) -> None:
    """Plain events and {"event", "key"} records mix; bad lines are counted, described (bounded), skipped."""
    lines = [
        json.dumps({"agent_id": "a", "user_id": "u-1"}),
        json.dumps({"event": {"agent_id": "b", "user_id": "u-2"}, "key": "k-9", "decision": "allow"}),
        json.dumps({"event": {"agent_id": "c", "user_id": "u-3"}}),
        "",
        "not json",
        json.dumps([1, 2]),
        "[" * 100_000,
        '{"n": ' + "9" * 5000 + "}",
    ]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = read_events(str(path))
    got = [(r.line, r.event["agent_id"], r.key) for r in source]
    assert got == [(1, "a", "u-1"), (2, "b", "k-9"), (3, "c", "u-3")]
    assert source.invalid == 4
    assert len(source.problems) == 4
    assert source.problems[0].startswith("line 5: not valid JSON")


def test_lines_at_the_size_limit_are_read_and_one_byte_over_are_skipped(tmp_path: Path) -> None:
    """--max-line-bytes counts the newline; a longer line is skipped in chunks and counted."""
    ok = json.dumps({"pad": "x" * 100})
    limit = len(ok) + 1
    over = json.dumps({"pad": "x" * 101})
    path = tmp_path / "e.jsonl"
    path.write_text(f"{ok}\n{over}\n{ok}\n{'x' * 300_000}\n{ok}\n", encoding="utf-8")
    source = read_events(str(path), max_line_bytes=limit)
    assert [r.line for r in source] == [1, 3, 5]
    assert source.invalid == 2
    assert source.problems[0] == f"line 2: longer than {limit:,} bytes"


def test_reading_stops_at_max_events_and_says_so(tmp_path: Path) -> None:
    """At most --max-events events are read; the report says it was truncated."""
    path = write_jsonl(tmp_path / "e.jsonl", [{"i": i} for i in range(10)])
    source = read_events(str(path), max_events=4)
    assert [r.event["i"] for r in source] == [0, 1, 2, 3]
    assert source.truncated
    exact = read_events(str(path), max_events=10)
    assert len(list(exact)) == 10
    assert not exact.truncated


def test_unreadable_or_broken_input_is_one_error_line(tmp_path: Path) -> None:
    """A missing file or a truncated gzip: exit 1, one error line naming the file."""
    broken = tmp_path / "e.gz"
    broken.write_bytes(gzip.compress(b'{"a": 1}\n' * 1000)[:40])
    for path in (str(tmp_path / "missing.jsonl"), str(broken)):
        result = invoke("replay", path, "--candidate", V2, "--against", V1)
        assert result.exit_code == 1, result.output
        assert len(result.stderr.splitlines()) == 1
        assert path in result.stderr
    with pytest.raises(EventsError):
        list(read_events(str(broken)))


def test_replay_gate_refuses_over_the_rate_and_passes_under_it() -> None:
    """replay_gate (for deploy --replay) raises ReplayGateRefused over R; no baseline: nothing to compare."""
    v1, v2 = load_bundle(V1), load_bundle(V2)
    with pytest.raises(ReplayGateRefused) as refused:
        replay_gate(v2, v1, read_events(str(RECORDED)), 0.1)
    assert refused.value.report.changed == 6
    assert "nothing was staged" in str(refused.value)
    report = replay_gate(v2, v1, read_events(str(RECORDED)), 0.2)
    assert report is not None
    assert report.changed == 6
    assert replay_gate(v2, None, read_events(str(RECORDED)), 0.0) is None


event_values = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=6)
hostile_events = st.fixed_dictionaries(
    {},
    optional={
        "agent_id": st.sampled_from(["api_gateway", "mobile_gateway", "x"]) | event_values,
        "flow_id": st.sampled_from(["login", "checkout", "search", "signup"]) | event_values,
        "risk_score": event_values,
        "geo": st.fixed_dictionaries({}, optional={"country": st.sampled_from(["KP", "IR", "US"]) | event_values})
        | event_values,
        "session": st.fixed_dictionaries({}, optional={"age_secs": event_values}) | event_values,
        "user_agent": st.sampled_from(["bot", "Mozilla"]) | event_values,
        "device": st.fixed_dictionaries({}, optional={"known": event_values}),
    },
)


@given(st.lists(hostile_events, max_size=30))
def test_replay_never_raises_and_counts_exactly_on_any_events(events: list[dict[str, Any]]) -> None:
    """Whatever the events hold, replay decides each on both sides and its counts are exact."""
    cand, base = _TABLES["v3"], _TABLES["v1"]
    report = replay(cand, base, [Recorded(i, e, None) for i, e in enumerate(events)])
    assert report.events == len(events)
    expected = expected_groups(cand, base, events)
    assert {(g.agent, g.flow, g.before, g.after): g.count for g in report.groups.values()} == {
        (scope_label(a), scope_label(f), b, c): n for (a, f, b, c), n in expected.items()
    }


_TABLES = {"v1": table(V1), "v3": table(V3)}


def test_progress_is_shown_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The progress line goes to stderr when it is a terminal, and nowhere otherwise (pipes, CI logs)."""
    from rule_engine.cli.analysis import _Progress

    quiet = _Progress("replay")
    quiet(8192)
    quiet.done()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = _Progress("replay")
    shown(8192)
    assert capsys.readouterr().err == "\rreplay: 8,192 events"


def test_groups_and_examples_are_bounded_at_their_limits() -> None:
    """At most max_groups groups (the rest counted in other_changed) and 200 examples in all."""
    deny_all = RuleTable.from_bundle(
        load_bundle_text('{"bundle_id": "d", "version": "1", "rules": [{"id": "deny", "then": {"decision": "deny"}}]}')
    )
    allow_all = RuleTable.from_bundle(load_bundle_text('{"bundle_id": "a", "version": "1", "rules": []}'))
    events = [Recorded(i, {"agent_id": f"agent-{i // 2}"}, None) for i in range(600)]  # 300 agents, 2 events each
    report = replay(deny_all, allow_all, events, examples=20, max_groups=250)
    assert report.changed == 600
    assert len(report.groups) == 250
    assert report.other_changed == 100
    assert sum(g.count for g in report.groups.values()) + report.other_changed == 600
    assert sum(len(g.examples) for g in report.groups.values()) == 200


def test_deploy_with_a_replay_gate_refuses_before_anything_is_staged(tmp_path: Path) -> None:
    """deploy --replay EVENTS --max-changed-rate R: over R, one error line, exit 1, nothing staged; under R, deployed."""
    from click.testing import CliRunner

    from rule_engine.cli import cli

    bundles = Path(__file__).resolve().parent.parent / "bundles"
    events = Path(__file__).resolve().parent / "cases" / "events" / "gateway.jsonl"
    base = ["--store", f"sqlite:///{tmp_path / 's.db'}"]
    runner = CliRunner()
    assert runner.invoke(cli, [*base, "deploy", str(bundles / "gateway-v1.json")]).exit_code == 0
    refused = runner.invoke(cli, [*base, "deploy", str(bundles / "gateway-v2.json"), "--replay", str(events)])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: ")
    history = runner.invoke(cli, [*base, "history", "--json"])
    assert len(json.loads(history.stdout)["versions"]) == 1
    allowed = [*base, "deploy", str(bundles / "gateway-v2.json"), "--replay", str(events), "--max-changed-rate", "0.5"]
    assert runner.invoke(cli, allowed).exit_code == 0
    usage = runner.invoke(cli, [*base, "deploy", str(bundles / "gateway-v2.json"), "--max-changed-rate", "0.5"])
    assert usage.exit_code == 2
