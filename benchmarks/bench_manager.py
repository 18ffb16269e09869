"""Issue 3 benchmarks: the DeploymentManager's data plane, swaps, and readers under swaps.

    .venv/bin/python benchmarks/bench_manager.py [--quick] [--repeat 25] [--json PATH]

Every figure is a ratio against a baseline measured in this process, in this run:

* ``get_active_table()`` vs a bare method call (goal <= 1.5x);
* ``route_and_get_table(h)`` with a precomputed hash, during a 10% canary, vs a bare method call
  (goal <= 3x); ``route(key)`` (hash included) vs H, a bare ``mmh3.hash`` (goal <= 2.5 H);
* ``RuleEngine.evaluate(event, key=...)`` on the 10k-rule table during a 10% canary vs the ideal
  end to end, ``ideal_route`` + ``IdealEvaluator.evaluate`` (goal <= 1.3x);
* swap latency: blue-green activation and rollback, in microseconds (median and p99), in-memory
  store, on the gateway bundle (the swap does not depend on the table's size: tables are built
  at prepare time; prepare is not timed);
* readers under swaps: 2 reader threads calling ``RuleEngine.evaluate`` while a writer thread swaps
  1,000 times a second (blue-green activate / rollback pairs, each after an untimed prepare),
  vs the same readers with no writer: ratio of p99 latencies (goal <= 1.2).

structlog is configured to render every event as JSON into a no-op logger (the cost of the
events, without I/O), as a service that ships its logs would pay.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mmh3
import structlog

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent / "bundles"), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _timing import Report, bench_main, interleaved  # noqa: E402
from generate_synthetic import expected_outcome, matching_event, synthetic_bundle  # noqa: E402
from ideal import HASH_KEY, IdealEvaluator, bare_method_call, ideal_route  # noqa: E402

from rule_engine import (  # noqa: E402
    BlueGreen,
    Canary,
    DeploymentManager,
    RuleBundle,
    RuleEngine,
    compute_request_hash,
    parse_bundle,
)
from rule_engine.serving.snapshot import ServingCell  # noqa: E402

REPO = HERE.parent
AGENT, FLOW, MATCH_AT = 7, 3, 6
CANARY_BP = 1000  # the canary's share during the data-plane figures: 10%


def quiet_logs() -> None:
    """Render structlog events as JSON into a logger that drops them (cost without I/O)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=True,
    )


def canary_manager(bundle: RuleBundle) -> tuple[DeploymentManager, str, str]:
    """A manager serving ``bundle`` as stable, with a second version of it in a 10% canary."""
    manager = DeploymentManager()
    stable = manager.prepare_deployment(bundle, BlueGreen(), "bench")
    manager.activate_deployment(stable)
    candidate = manager.prepare_deployment(bundle, Canary(stages=[10, 25, 50, 100]), "bench")
    manager.activate_deployment(candidate)
    if manager.snapshot.candidate is None or manager.snapshot.share_bp != CANARY_BP:
        raise SystemExit("the canary is not serving 10% of traffic")
    return manager, stable, candidate


def keys_by_side(manager: DeploymentManager, candidate: str) -> tuple[str, str]:
    """A 16-char key routed to the stable version and one routed to the candidate."""
    stable_key = candidate_key = None
    for i in range(100_000):
        key = f"user-{i:011d}"
        table = manager.route(key)
        assert table is not None
        if table.version_id == candidate:
            candidate_key = candidate_key or key
        else:
            stable_key = stable_key or key
        if stable_key and candidate_key:
            return stable_key, candidate_key
    raise SystemExit("no key reaches both sides of the canary")


def data_plane(bundle_json: bytes, *, quick: bool, repeat: int) -> Report:
    bundle = parse_bundle(bundle_json)
    manager, _, candidate = canary_manager(bundle)
    engine = RuleEngine(manager)
    ideal_stable = IdealEvaluator.from_bundle(json.loads(bundle_json))
    ideal_candidate = IdealEvaluator.from_bundle(json.loads(bundle_json))
    event = matching_event(AGENT, FLOW, MATCH_AT)
    expected = expected_outcome(AGENT, FLOW, MATCH_AT)
    stable_key, candidate_key = keys_by_side(manager, candidate)
    for key in (stable_key, candidate_key):
        got = engine.evaluate(event, key=key)
        if (got.decision, got.rule_id) != expected or got.error is not None:
            raise SystemExit(f"RuleEngine.evaluate gave {got}, expected {expected}")

    def ideal_end_to_end(event: Mapping[str, Any], key: str) -> tuple[str, str | None]:
        return ideal_route(key, CANARY_BP, ideal_stable, ideal_candidate).evaluate(event)

    request_hash = compute_request_hash(HASH_KEY)
    bare = dataclasses.replace(manager.serving_cell.current, stable_recorder=None, candidate_recorder=None)
    unrecorded = RuleEngine(ServingCell(bare))  # the same routing and tables, no recording
    cases: dict[str, Any] = {
        "call": bare_method_call(),
        "H": (mmh3.hash, (HASH_KEY,)),
        "get_active_table": manager.get_active_table,
        "route_and_get_table": (manager.route_and_get_table, (request_hash,)),
        "route": (manager.route, (HASH_KEY,)),
        "ideal_route": (ideal_route, (HASH_KEY, CANARY_BP, "stable", "candidate")),
        "ideal_e2e": (ideal_end_to_end, (event, HASH_KEY)),
        "evaluate_stable": (engine.evaluate, (event, stable_key)),
        "evaluate_candidate": (engine.evaluate, (event, candidate_key)),
        "evaluate_unrecorded": (unrecorded.evaluate, (event, candidate_key)),
    }
    ns = interleaved(cases, repeat=repeat if not quick else 5, target_ms=2.0 if not quick else 0.5)
    report = Report(title=f"issue 3: data plane during a 10% canary ({len(bundle.rules):,}-rule tables)")
    report.baseline("call", ns["call"])
    report.baseline("H", ns["H"])
    report.baseline("ideal e2e", ns["ideal_e2e"])
    report.baseline("ideal route", ns["ideal_route"])
    report.add("get_active_table()", ns["get_active_table"], baseline="call", goal=1.5)
    report.add("route_and_get_table(h), precomputed hash", ns["route_and_get_table"], baseline="call", goal=3.0)
    report.add("route(key), hash included", ns["route"], baseline="H", goal=2.5)
    report.add("ideal_route(key) (hash, bucket, pick)", ns["ideal_route"], baseline="H")
    report.add("ideal end to end: ideal_route + IdealEvaluator", ns["ideal_e2e"], baseline="H")
    report.add("RuleEngine.evaluate(event, key) -> stable", ns["evaluate_stable"], baseline="ideal e2e", goal=1.3)
    report.add("RuleEngine.evaluate(event, key) -> candidate", ns["evaluate_candidate"], baseline="ideal e2e", goal=1.3)
    report.baseline("unrecorded", ns["evaluate_unrecorded"])
    report.add(
        "recording: evaluate -> candidate vs unrecorded", ns["evaluate_candidate"], baseline="unrecorded", goal=1.1
    )
    report.add("route(key) vs ideal_route(key)", ns["route"], baseline="ideal route", goal=1.2)
    return report


def _gateway_bundles() -> tuple[RuleBundle, RuleBundle]:
    return (
        parse_bundle((REPO / "bundles" / "gateway-v1.json").read_bytes()),
        parse_bundle((REPO / "bundles" / "gateway-v2.json").read_bytes()),
    )


def _percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered))))]


def swap_latency(*, cycles: int) -> tuple[Report, dict[str, float]]:
    """Blue-green activation and rollback latency on an in-memory store, prepare untimed."""
    bundles = _gateway_bundles()
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(bundles[0], BlueGreen(), "bench"))
    activations: list[int] = []
    rollbacks: list[int] = []
    for i in range(cycles):
        version = manager.prepare_deployment(bundles[(i + 1) % 2], BlueGreen(), "bench")
        t0 = time.perf_counter_ns()
        manager.activate_deployment(version)
        t1 = time.perf_counter_ns()
        manager.rollback()
        t2 = time.perf_counter_ns()
        activations.append(t1 - t0)
        rollbacks.append(t2 - t1)
    activations.sort()
    rollbacks.sort()
    figures = {
        "activate_p50_us": statistics.median(activations) / 1000,
        "activate_p99_us": _percentile(activations, 0.99) / 1000,
        "rollback_p50_us": statistics.median(rollbacks) / 1000,
        "rollback_p99_us": _percentile(rollbacks, 0.99) / 1000,
    }
    report = Report(
        title=f"issue 3: swap latency, in-memory store, {cycles} activate/rollback cycles (no goal)",
        meta=figures,
    )
    report.baseline("call", _bare_call_ns())
    report.add("activate_deployment (blue-green), median", figures["activate_p50_us"] * 1000, baseline="call")
    report.add("activate_deployment (blue-green), p99", figures["activate_p99_us"] * 1000, baseline="call")
    report.add("rollback(), median", figures["rollback_p50_us"] * 1000, baseline="call")
    report.add("rollback(), p99", figures["rollback_p99_us"] * 1000, baseline="call")
    return report, figures


def _bare_call_ns() -> float:
    return interleaved({"call": bare_method_call()}, repeat=5)["call"]


def _reader(
    engine: RuleEngine,
    events: Sequence[tuple[Mapping[str, Any], str]],
    stop: threading.Event,
    out: list[int],
    ready: threading.Barrier,
) -> None:
    evaluate = engine.evaluate
    clock = time.perf_counter_ns
    append = out.append
    n = len(events)
    i = 0
    ready.wait()
    while not stop.is_set():
        event, key = events[i % n]
        t0 = clock()
        evaluate(event, key)
        append(clock() - t0)
        i += 1


def _writer(
    manager: DeploymentManager, bundles: Sequence[RuleBundle], rate: float, stop: threading.Event, swaps: list[int]
) -> None:
    """Swap ``rate`` times a second: prepare (untimed in the rate), activate, rollback."""
    period = 1.0 / rate
    next_at = time.perf_counter()
    i = 0
    while not stop.is_set():
        version = manager.prepare_deployment(bundles[i % 2], BlueGreen(), "bench")
        for swap in (functools.partial(manager.activate_deployment, version), manager.rollback):
            next_at += period
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            swap()
            swaps[0] += 1
        i += 1


WARM_UP = 100  # each reader thread's first calls, not counted
MIN_SAMPLES = 200  # each reader thread's calls counted per phase, at least (within 10x the phase's time)


def readers_under_swaps(*, seconds: float, rounds: int, rate: float = 1000.0) -> tuple[Report, dict[str, float]]:
    """p50/p99 of RuleEngine.evaluate in 2 reader threads, with and without a swapping writer."""
    bundles = _gateway_bundles()
    manager = DeploymentManager()
    manager.activate_deployment(manager.prepare_deployment(bundles[0], BlueGreen(), "bench"))
    engine = RuleEngine(manager)
    lines = (REPO / "tests" / "cases" / "events" / "gateway.jsonl").read_text(encoding="utf-8").splitlines()
    events = [(json.loads(ln)["event"], f"user-{i:011d}") for i, ln in enumerate(lines) if ln.strip()]
    samples: dict[str, list[int]] = {"no swaps": [], "swaps": []}
    swap_rates: list[float] = []
    for _ in range(rounds):
        for phase in ("no swaps", "swaps"):
            stop = threading.Event()
            outs: list[list[int]] = [[], []]
            ready = threading.Barrier(3)
            threads = [threading.Thread(target=_reader, args=(engine, events, stop, out, ready)) for out in outs]
            swaps = [0]
            if phase == "swaps":
                threads.append(threading.Thread(target=_writer, args=(manager, bundles, rate, stop, swaps)))
            for t in threads:
                t.start()
            ready.wait()
            t0 = time.perf_counter()
            time.sleep(seconds)
            # a loaded machine (the writer's prepares hold the GIL for ms) may leave a reader with a
            # handful of calls: go on until each has MIN_SAMPLES past its warm-up, at most 10x longer
            while any(len(out) < WARM_UP + MIN_SAMPLES for out in outs) and time.perf_counter() - t0 < 10 * seconds:
                time.sleep(0.01)
            stop.set()
            for t in threads:
                t.join()
            if phase == "swaps":
                swap_rates.append(swaps[0] / (time.perf_counter() - t0))
            for out in outs:
                samples[phase].extend(out[min(WARM_UP, len(out) // 2) :])  # drop each thread's warm-up
    figures: dict[str, float] = {}
    for phase, values in samples.items():
        values.sort()
        figures[f"{phase} p50"] = float(statistics.median(values))
        figures[f"{phase} p99"] = float(_percentile(values, 0.99))
        figures[f"{phase} n"] = float(len(values))
    figures["swaps per second"] = statistics.median(swap_rates)
    report = Report(
        title=(
            f"issue 3: RuleEngine.evaluate in 2 reader threads, with vs without a writer swapping "
            f"~{figures['swaps per second']:.0f}/s ({rounds} x {seconds:g} s per phase, interleaved)"
        ),
        meta=figures,
    )
    report.baseline("no swaps p50", figures["no swaps p50"])
    report.baseline("no swaps p99", figures["no swaps p99"])
    report.add("evaluate p50 under swaps", figures["swaps p50"], baseline="no swaps p50")
    report.add("evaluate p99 under swaps", figures["swaps p99"], baseline="no swaps p99", goal=1.2)
    return report, figures


def run(*, quick: bool = False, repeat: int = 25, bundle_json: bytes | None = None) -> list[Report]:
    """All issue-3 figures."""
    quiet_logs()
    if bundle_json is None:
        bundle_json = json.dumps(synthetic_bundle()).encode("utf-8")
    reports = [data_plane(bundle_json, quick=quick, repeat=repeat)]
    reports.append(swap_latency(cycles=50 if quick else 1000)[0])
    reports.append(readers_under_swaps(seconds=0.2 if quick else 1.0, rounds=1 if quick else 3)[0])
    return reports


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
