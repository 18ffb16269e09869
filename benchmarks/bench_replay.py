"""Issue 13 benchmark: the throughput of ``replay`` against its floor.

    .venv/bin/python benchmarks/bench_replay.py [--quick] [--repeat 25] [--json PATH]

The floor ("parse + evaluate both") is the least any replay must do: read the JSONL file line by
line, ``json.loads`` each line, and evaluate the event on both tables (catching their errors). The
figure is ``rule_engine.analysis.replay.replay(candidate, baseline, read_events(path))`` on the same
file, which also groups the changes, counts errors, times each side and runs the candidate's type
check in the same pass (the CLI's default); goal <= 1.5x. Shown too: the same without the type check
(``--no-check``). Events are made like the demo's traffic (``rule_engine.cli.demo.make_event``, keyed
records), candidate gateway-v3-broken against gateway-v2 (about half of the candidate's
evaluations raise, as in the demo). Thread CPU time per whole pass, gc enabled, the cases
interleaved round-robin (``bench_table.time_with_gc``), best pass kept (medians in the notes).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _timing import Report, bench_main  # noqa: E402
from bench_table import time_with_gc  # noqa: E402

from rule_engine import RuleTable, load_bundle  # noqa: E402
from rule_engine.analysis.events import read_events  # noqa: E402
from rule_engine.analysis.replay import replay  # noqa: E402
from rule_engine.cli.demo import make_event  # noqa: E402

BUNDLES = HERE.parent / "bundles"


def write_events(path: Path, count: int, seed: int = 2026) -> None:
    """``count`` demo-like records ``{"event": ..., "key": ...}``, one per line."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(count):
            event, key = make_event(rng)
            out.write(json.dumps({"event": event, "key": key}) + "\n")


def floor(path: Path, candidate: RuleTable, baseline: RuleTable) -> int:
    """Parse every line and evaluate the event on both tables: the least a replay must do."""
    cand, base = candidate.evaluate, baseline.evaluate
    loads = json.loads
    n = errors = 0
    with path.open("rb") as lines:
        for line in lines:
            event = loads(line)["event"]
            try:
                base(event)
            except Exception:
                errors += 1
            try:
                cand(event)
            except Exception:
                errors += 1
            n += 1
    return n


def run(*, quick: bool = False, repeat: int = 25) -> list[Report]:
    """Measure and report (see the module docstring)."""
    count = 5_000 if quick else 50_000
    rounds = 3 if quick else max(5, min(repeat, 11))
    candidate = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v3-broken.json"))
    baseline = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v2.json"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        write_events(path, count)
        report_with = replay(candidate, baseline, read_events(str(path)))
        if report_with.events != count or floor(path, candidate, baseline) != count:
            raise SystemExit("replay and the floor did not read every event")
        cases: dict[str, Callable[[], Any]] = {
            "floor": lambda: floor(path, candidate, baseline),
            "replay": lambda: replay(candidate, baseline, read_events(str(path))),
            "replay --no-check": lambda: replay(candidate, baseline, read_events(str(path)), check=False),
        }
        samples = time_with_gc({name: (lambda _, fn=fn: fn(), None) for name, fn in cases.items()}, rounds)
    per_event = {name: min(s) / count for name, s in samples.items()}
    medians = {name: statistics.median(s) / count for name, s in samples.items()}
    report = Report(title=f"issue 13: replay throughput ({count:,} demo events, v3-broken vs v2), ns per event")
    report.baseline("floor", per_event["floor"])
    report.add(
        "replay (groups, errors, latency, type check)",
        per_event["replay"],
        baseline="floor",
        goal=1.5,
        note=f"median {medians['replay'] / medians['floor']:.2f}x; {report_with.changed:,} changed, "
        f"{report_with.errors['candidate']:,} candidate errors",
    )
    report.add(
        "replay --no-check",
        per_event["replay --no-check"],
        baseline="floor",
        note=f"median {medians['replay --no-check'] / medians['floor']:.2f}x",
    )
    report.meta = {"events": count, "rounds": rounds}
    return [report]


if __name__ == "__main__":
    raise SystemExit(bench_main(__doc__.splitlines()[0] if __doc__ else None, run))
