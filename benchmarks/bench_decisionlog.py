"""Issue 13 benchmark: the request-path cost of the decision log and of shadow evaluation.

    .venv/bin/python benchmarks/bench_decisionlog.py [--quick] [--repeat 25] [--json PATH]
    .venv/bin/python benchmarks/bench_decisionlog.py --callgrind [--calls 5000]

``RuleEngine.evaluate(event, key)`` on the gateway-v1 bundle (a small table, so the taps' share of
the cost is as large as it gets), one version serving, against ``UntappedEngine``: the same
``evaluate`` without the two taps branches (the code before the decision log; benchmark-only):

- **off**: no log, no shadow (``snapshot.taps is None``), goal <= 1.02x;
- **log 1%**: a decision log sampling 1% of decisions, its writer thread writing a rotating JSONL
  file in a temporary directory, goal <= 1.05x;
- **log1-path** / **shadow10-path** (callgrind only): the same with the consumer thread not
  started, so the count is the request path alone (the sample, the tuple, the non-blocking put);
  ``log1`` and ``shadow10`` include the writer's and the worker's instructions;
- **shadow 10%**: a shadow evaluator (gateway-v2) on 10% of the events, its worker thread running;
  p50 of per-call latency (each call timed alone) vs the p50 without shadow, goal <= 1.10x.

Timing is interleaved round-robin, minimum over repeats (``_timing.interleaved``). On a loaded
machine, prefer ``--callgrind``: each case runs under ``valgrind --tool=callgrind`` with 0 and with
``--calls`` evaluations; (instructions(N) - instructions(0)) / N is the cost per call, all threads
included (so the writer's and the shadow worker's work is counted too), and repeatable under load.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from time import perf_counter_ns
from typing import Any

import mmh3

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _timing import Report, interleaved  # noqa: E402

from rule_engine import Decision, DeploymentManager, RuleEngine, RuleTable, load_bundle  # noqa: E402
from rule_engine.cli.demo import make_event  # noqa: E402
from rule_engine.observability.decisions import start_decision_log, stop_decision_log  # noqa: E402
from rule_engine.serving.decisionlog import DecisionLog, Taps  # noqa: E402
from rule_engine.serving.engine import NO_VERSION, _describe  # noqa: E402
from rule_engine.serving.routing import hash_key  # noqa: E402
from rule_engine.serving.shadow import ShadowEvaluator, start_shadow, stop_shadow  # noqa: E402

BUNDLES = HERE.parent / "bundles"
_MASK64 = (1 << 64) - 1
CASES = ("untapped", "off", "log1", "shadow10", "log1-path", "shadow10-path")
TIMED = ("untapped", "off", "log1")


class UntappedEngine(RuleEngine):
    """``RuleEngine.evaluate`` without the taps branches (benchmark baseline only; keep in step)."""

    __slots__ = ()

    def evaluate(self, event: Mapping[str, Any], key: Any = None) -> Decision:
        snapshot = self._cell.current
        table = snapshot.stable
        if table is None:
            return NO_VERSION
        recorder = snapshot.stable_recorder
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
                    recorder = snapshot.candidate_recorder
            except Exception:
                pass
        start = perf_counter_ns()
        try:
            decision = table.evaluate(event)
        except Exception as exc:
            if recorder is not None:
                recorder.record_error(perf_counter_ns() - start)
            if table is candidate and snapshot.stable is not None:
                return self._on_stable(snapshot.stable, snapshot.stable_recorder, event)
            return table.error_decision(_describe(exc))
        if recorder is not None:
            recorder.record(decision, perf_counter_ns() - start)
        return decision


def _event() -> tuple[dict[str, Any], str]:
    """A demo event v1 evaluates without error (the mobile gateway's numeric session age)."""
    rng = random.Random(5)
    v1 = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v1.json"))
    while True:
        event, key = make_event(rng)
        try:
            v1.evaluate(event)
        except Exception:
            continue
        if event["agent_id"] != "api_gateway":
            return event, key


def _manager() -> DeploymentManager:
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(load_bundle(BUNDLES / "gateway-v1.json")))
    return manager


class Setup:
    """One engine per case (each on its own manager, only the ``cases`` asked); :meth:`close` stops the threads."""

    def __init__(self, tmp: str, cases: tuple[str, ...] = CASES) -> None:
        self.engines: dict[str, RuleEngine] = {}
        self.writer = self.shadow = None
        if "untapped" in cases:
            self.engines["untapped"] = UntappedEngine(_manager())
        if "off" in cases:
            self.engines["off"] = RuleEngine(_manager())
        if "log1" in cases:
            self.log_manager = _manager()
            self.writer = start_decision_log(self.log_manager, Path(tmp) / "decisions.jsonl", sample_rate=0.01)
            self.engines["log1"] = RuleEngine(self.log_manager)
        for case in ("log1-path", "shadow10-path"):  # the request path alone: no consumer thread started
            if case in cases:
                cell = _manager().serving_cell
                if case == "log1-path":
                    cell.attach(Taps(DecisionLog(sample_rate=0.01, max_queue=1_000_000)))
                else:
                    v2 = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v2.json"))
                    cell.attach(Taps(None, ShadowEvaluator(v2, sample_rate=0.1, max_queue=1_000_000)))
                self.engines[case] = RuleEngine(cell)
        if "shadow10" in cases:
            self.shadow_manager = _manager()
            v2 = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v2.json"))
            self.shadow = start_shadow(self.shadow_manager, v2, sample_rate=0.1, max_queue=1000)
            self.engines["shadow10"] = RuleEngine(self.shadow_manager)

    def engine(self, case: str) -> RuleEngine:
        return self.engines[case]

    def close(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        if self.writer is not None:
            stop_decision_log(self.log_manager, self.writer)
            counts["log"] = self.writer.stats()
        if self.shadow is not None:
            report = stop_shadow(self.shadow_manager, self.shadow)
            counts["shadow"] = {"sampled": report.sampled, "dropped": report.dropped}
        return counts


def _p50(engine: RuleEngine, event: Any, key: str, calls: int) -> float:
    evaluate, clock = engine.evaluate, perf_counter_ns
    samples = []
    for _ in range(calls):
        t0 = clock()
        evaluate(event, key)
        samples.append(clock() - t0)
    return statistics.median(samples)


def run(*, quick: bool = False, repeat: int = 25) -> list[Report]:
    """Time every case interleaved; the p50 comparison for the shadow."""
    event, key = _event()
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(tmp)
        try:
            ns = interleaved(
                {case: (setup.engine(case).evaluate, (event, key)) for case in TIMED},
                repeat=5 if quick else repeat,
            )
            rounds = 3 if quick else 11
            calls = 2_000 if quick else 20_000
            p50s: dict[str, list[float]] = {"off": [], "shadow10": []}
            for _ in range(rounds):
                for case in p50s:
                    p50s[case].append(_p50(setup.engine(case), event, key, calls))
        finally:
            counts = setup.close()
    report = Report("decision log and shadow: RuleEngine.evaluate, gateway-v1, one version serving")
    report.baseline("untapped", ns["untapped"])
    report.add("taps off (no log, no shadow)", ns["off"], baseline="untapped", goal=1.02)
    report.add("decision log at 1%", ns["log1"], baseline="untapped", goal=1.05, note=f"{counts['log']}")
    report.baseline("p50 no shadow", min(p50s["off"]))
    report.add(
        "shadow at 10%: p50",
        min(p50s["shadow10"]),
        baseline="p50 no shadow",
        goal=1.10,
        note=f"{counts['shadow']}; best p50 of {rounds} rounds of {calls} timed calls",
    )
    return [report]


def one_case(case: str, calls: int) -> None:
    """Set everything up, make ``calls`` evaluations on ``case``, stop (the callgrind subject)."""
    event, key = _event()
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(tmp, (case,))
        evaluate = setup.engine(case).evaluate
        for _ in range(calls):
            evaluate(event, key)
        setup.close()


def _callgrind_run(case: str, calls: int, out: Path) -> subprocess.Popen[bytes]:
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--case",
        case,
        "--calls",
        str(calls),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _total(out: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError("no instruction total in the callgrind output")
    return int(found.group(1))


def callgrind(calls: int, cases: tuple[str, ...] = CASES) -> int:
    """Instructions per evaluate call of each case, (Ir(N) - Ir(0)) / N, and the ratios to ``untapped``."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for case in cases:  # two at a time: the machine has two cores
            pair = {n: Path(tmp) / f"{case}.{n}.out" for n in (0, calls)}
            procs = [_callgrind_run(case, n, path) for n, path in pair.items()]
            if any(p.wait() != 0 for p in procs):
                raise RuntimeError(f"valgrind failed on {case}")
            runs[case] = (_total(pair[calls]) - _total(pair[0])) / calls
    base = runs["untapped"]
    goals = {"off": 1.02, "log1-path": 1.05}
    print(f"== callgrind: instructions per RuleEngine.evaluate, {calls} calls (all threads)")
    ok = True
    for case, value in runs.items():
        goal = goals.get(case)
        ratio = value / base
        status = "-" if goal is None else ("PASS" if ratio <= goal else "MISS")
        ok = ok and status != "MISS"
        print(f"{case:<10} {value:>10.0f} Ir/call  {ratio:.3f}x untapped  goal {goal or '-'}  {status}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--json", default=None)
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead")
    parser.add_argument("--calls", type=int, default=5_000)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(CASES), help="callgrind: the cases to count (untapped first)")
    args = parser.parse_args(argv)
    if args.case:
        one_case(args.case, args.calls)
        return 0
    if args.callgrind:
        return callgrind(args.calls, tuple(args.cases.split(",")))
    reports = run(quick=args.quick, repeat=args.repeat)
    for report in reports:
        report.print()
    if args.json:
        reports[0].dump_json(args.json)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
