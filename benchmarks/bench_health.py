"""Issue 4 benchmark: the cost of recording health in ``RuleEngine.evaluate``.

    .venv/bin/python benchmarks/bench_health.py [--quick] [--repeat 25] [--json PATH]

``RuleEngine.evaluate`` times each evaluation and counts it in the serving version's
``VersionRecorder`` (evaluations, errors, timeouts, latency histogram, decisions). The baseline is
:class:`UnrecordedEngine`, the same routing and evaluation with the timing and recording lines
removed (a benchmark-only subclass; the library's hot path is unchanged), measured interleaved in
the same run on the 10k-rule synthetic table. Goal: recording adds <= 20% to an evaluate
(ratio <= 1.2x), with one version serving and during a 10% canary.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent / "bundles"), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import mmh3  # noqa: E402
from _timing import Report, bench_main, interleaved  # noqa: E402
from bench_manager import canary_manager, keys_by_side, quiet_logs  # noqa: E402
from generate_synthetic import expected_outcome, matching_event, synthetic_bundle  # noqa: E402
from ideal import HASH_KEY, bare_method_call  # noqa: E402

from rule_engine import BlueGreen, Decision, DeploymentManager, RuleEngine, parse_bundle  # noqa: E402
from rule_engine.serving.engine import NO_VERSION  # noqa: E402
from rule_engine.serving.routing import hash_key  # noqa: E402

AGENT, FLOW, MATCH_AT = 7, 3, 6
_MASK64 = (1 << 64) - 1


class UnrecordedEngine(RuleEngine):
    """``RuleEngine.evaluate`` without the timing and the health recording (benchmark baseline only).

    Keep in step with :meth:`rule_engine.RuleEngine.evaluate`: same snapshot read, same routing,
    same error fallback, minus ``perf_counter_ns`` and ``recorder.record``.
    """

    __slots__ = ()

    def evaluate(self, event: Mapping[str, Any], key: Any = None) -> Decision:
        snapshot = self._cell.current
        table = snapshot.stable
        if table is None:
            return NO_VERSION
        candidate = snapshot.candidate
        if candidate is not None:
            try:
                if key is None:
                    key = event.get(self.key_field)
                if type(key) is str:
                    data = key if key.isascii() else key.encode("utf-8", "surrogatepass")
                    request_hash: int | None = mmh3.hash(data, 0, False)
                else:
                    request_hash = hash_key(key)
                if (
                    request_hash is not None
                    and (snapshot.multiplier * request_hash + snapshot.offset) & _MASK64 < snapshot.limit
                ):
                    table = candidate
            except Exception:
                pass
        try:
            decision: Decision = table.evaluate(event)
        except Exception as exc:
            if table is candidate and snapshot.stable is not None:
                return snapshot.stable.evaluate(event)
            return table.error_decision(f"{type(exc).__name__}: {exc}")
        return decision


def run(*, quick: bool = False, repeat: int = 25, bundle_json: bytes | None = None) -> list[Report]:
    """The recording-overhead figures."""
    quiet_logs()
    if bundle_json is None:
        bundle_json = json.dumps(synthetic_bundle()).encode("utf-8")
    bundle = parse_bundle(bundle_json)
    event = matching_event(AGENT, FLOW, MATCH_AT)
    expected = expected_outcome(AGENT, FLOW, MATCH_AT)

    single = DeploymentManager()
    single.activate_deployment(single.prepare_deployment(bundle, BlueGreen(), "bench"))
    canary, _, candidate = canary_manager(bundle)
    stable_key, candidate_key = keys_by_side(canary, candidate)
    engines = {
        "one version": (RuleEngine(single), UnrecordedEngine(single), HASH_KEY),
        "canary, key -> stable": (RuleEngine(canary), UnrecordedEngine(canary), stable_key),
        "canary, key -> candidate": (RuleEngine(canary), UnrecordedEngine(canary), candidate_key),
    }
    cases: dict[str, Any] = {"call": bare_method_call()}
    for name, (recorded, unrecorded, key) in engines.items():
        for engine in (recorded, unrecorded):
            got = engine.evaluate(event, key)
            if (got.decision, got.rule_id) != expected:
                raise SystemExit(f"{type(engine).__name__} gave {got}, expected {expected}")
        cases[f"{name}: recorded"] = (recorded.evaluate, (event, key))
        cases[f"{name}: unrecorded"] = (unrecorded.evaluate, (event, key))
    table = single.get_active_table()
    assert table is not None
    cases["table.evaluate"] = (table.evaluate, (event,))
    ns = interleaved(cases, repeat=repeat if not quick else 5, target_ms=2.0 if not quick else 0.5)

    report = Report(
        title=f"issue 4: health recording overhead in RuleEngine.evaluate ({len(bundle.rules):,}-rule table)"
    )
    report.baseline("call", ns["call"])
    report.baseline("table.evaluate", ns["table.evaluate"])
    for name in engines:
        report.baseline(f"unrecorded ({name})", ns[f"{name}: unrecorded"])
    for name in engines:
        report.add(
            f"RuleEngine.evaluate, {name}",
            ns[f"{name}: recorded"],
            baseline=f"unrecorded ({name})",
            goal=1.2,
            note=f"+{ns[f'{name}: recorded'] - ns[f'{name}: unrecorded']:.0f} ns for timing + recording",
        )
    report.add(
        "RuleEngine.evaluate, one version, vs bare table.evaluate",
        ns["one version: recorded"],
        baseline="table.evaluate",
    )
    return [report]


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
