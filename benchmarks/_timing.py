"""Noise-robust micro-timing helpers for shared, noisy (2-core) machines.

Standard library only, so the peer scripts can import it from their own venvs.

* :func:`measure` - ns per call of ``fn(*args)``, timeit-style: the call is made from a
  generated loop (no wrapper lambda), ``gc`` is disabled while timing, each repeat times
  ``number`` calls with ``time.perf_counter_ns`` and the result is the minimum (or a low
  percentile) over repeats. The figure includes the loop's own overhead (~5-10 ns), like
  ``timeit``; :func:`loop_overhead` measures it if you want to subtract it.
* :func:`interleaved` - the same for several cases, alternating them round-robin within
  every repeat so that drift (frequency scaling, neighbours) hits all cases alike.
* :class:`Report` - a table of name, ns/call, ratio vs a baseline measured in the same
  run, goal (``<= 1.5x``) and PASS/MISS; ``--json PATH`` dump.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "Case",
    "Report",
    "Row",
    "add_report_args",
    "calibrate",
    "interleaved",
    "loop_overhead",
    "measure",
]

#: A case is a callable (called with no arguments) or ``(callable, args)``.
Case: TypeAlias = Callable[..., object] | tuple[Callable[..., object], tuple[Any, ...]]

_LOOP_CACHE: dict[int, Callable[..., int]] = {}


def _loop_for(n_args: int) -> Callable[..., int]:
    """A timing loop calling ``fn(a0, ..., a{n-1})`` with the args as fast locals."""
    loop = _LOOP_CACHE.get(n_args)
    if loop is None:
        names = [f"a{i}" for i in range(n_args)]
        params = "".join(f", {n}" for n in names)
        src = (
            f"def _timing_loop(_it, _timer, fn{params}):\n"
            f"    _t0 = _timer()\n"
            f"    for _ in _it:\n"
            f"        fn({', '.join(names)})\n"
            f"    return _timer() - _t0\n"
        )
        ns: dict[str, Any] = {}
        exec(compile(src, f"<timing-loop-{n_args}>", "exec"), ns)
        loop = ns["_timing_loop"]
        _LOOP_CACHE[n_args] = loop
    return loop


def _split(case: Case) -> tuple[Callable[..., object], tuple[Any, ...]]:
    if isinstance(case, tuple):
        fn, args = case
        return fn, tuple(args)
    return case, ()


def _once(fn: Callable[..., object], args: tuple[Any, ...], number: int) -> int:
    """Total ns for ``number`` calls (gc must be handled by the caller)."""
    return _loop_for(len(args))(itertools.repeat(None, number), time.perf_counter_ns, fn, *args)


def _stat(samples_ns_per_call: Sequence[float], percentile: float) -> float:
    ordered = sorted(samples_ns_per_call)
    if percentile <= 0:
        return ordered[0]
    k = min(len(ordered) - 1, max(0, math.ceil(percentile / 100 * len(ordered)) - 1))
    return ordered[k]


def calibrate(case: Case, *, target_ms: float = 2.0, max_number: int = 10_000_000) -> int:
    """A ``number`` of calls that takes about ``target_ms`` per repeat."""
    fn, args = _split(case)
    number = 1
    while True:
        elapsed = _once(fn, args, number)
        if elapsed >= target_ms * 1e6 / 5 or number >= max_number:
            break
        number *= 5
    per_call = max(elapsed / number, 1e-3)
    return int(max(1, min(max_number, target_ms * 1e6 / per_call)))


def measure(
    fn: Callable[..., object],
    *,
    number: int | None = None,
    repeat: int = 25,
    args: tuple[Any, ...] = (),
    percentile: float = 0.0,
    warmup: int = 1,
) -> float:
    """ns per call of ``fn(*args)``: min (``percentile=0``) or a low percentile over repeats.

    ``number=None`` calibrates to ~2 ms per repeat.
    """
    case: Case = (fn, args)
    if number is None:
        number = calibrate(case)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            _once(fn, args, number)
        samples = [_once(fn, args, number) / number for _ in range(repeat)]
    finally:
        if gc_was_enabled:
            gc.enable()
    return _stat(samples, percentile)


def interleaved(
    cases: Mapping[str, Case],
    *,
    number: int | Mapping[str, int] | None = None,
    repeat: int = 25,
    percentile: float = 0.0,
    warmup: int = 1,
    target_ms: float = 2.0,
) -> dict[str, float]:
    """ns per call for each case, alternating the cases round-robin within each repeat.

    The starting case rotates every repeat, so no case always runs right after the same
    neighbour. ``number`` may be one int, a per-case mapping, or None (calibrate each case
    to ~``target_ms`` per repeat, so slow and fast cases get similar time slices).
    """
    split = {name: _split(c) for name, c in cases.items()}
    if number is None:
        numbers = {name: calibrate(c, target_ms=target_ms) for name, c in cases.items()}
    elif isinstance(number, int):
        numbers = dict.fromkeys(cases, number)
    else:
        numbers = {name: number[name] for name in cases}
    names = list(cases)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            for name in names:
                fn, args = split[name]
                _once(fn, args, numbers[name])
        for r in range(repeat):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn, args = split[name]
                samples[name].append(_once(fn, args, numbers[name]) / numbers[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: _stat(samples[name], percentile) for name in names}


def _noop() -> None:
    return None


def loop_overhead(*, number: int = 200_000, repeat: int = 25) -> float:
    """ns per iteration of the timing loop calling an empty Python function."""
    return measure(_noop, number=number, repeat=repeat)


# --------------------------------------------------------------------------- reporting


@dataclass
class Row:
    name: str
    ns: float
    baseline: str | None = None
    goal: float | None = None  # max ratio vs baseline, e.g. 1.5
    note: str = ""
    ratio: float | None = None
    status: str = ""  # PASS / MISS / "" (no goal)


@dataclass
class Report:
    """Collects figures measured in one run and prints them as ratios vs baselines.

    ``baselines`` maps a baseline name (e.g. ``"H"``) to its ns/call measured in the same
    run; every row is printed as a ratio against one of them.
    """

    title: str = "benchmark"
    baselines: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def baseline(self, name: str, ns: float) -> None:
        self.baselines[name] = ns

    def add(
        self,
        name: str,
        ns: float,
        *,
        baseline: str,
        goal: float | None = None,
        note: str = "",
    ) -> Row:
        if baseline not in self.baselines:
            raise KeyError(f"baseline {baseline!r} was not measured in this run")
        ratio = ns / self.baselines[baseline]
        status = "" if goal is None else ("PASS" if ratio <= goal else "MISS")
        row = Row(name, ns, baseline, goal, note, ratio, status)
        self.rows.append(row)
        return row

    @property
    def ok(self) -> bool:
        return all(r.status != "MISS" for r in self.rows)

    def format(self) -> str:
        lines = [f"== {self.title}"]
        if self.baselines:
            lines.append("baselines (same run): " + ", ".join(f"{k} = {v:.1f} ns" for k, v in self.baselines.items()))
        w = max([len(r.name) for r in self.rows] + [4])
        lines.append(f"{'case':<{w}}  {'ns/call':>10}  {'ratio':>12}  {'goal':>9}  result")
        for r in self.rows:
            ratio = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else "-"
            goal = f"<= {r.goal:g}x" if r.goal is not None else "-"
            line = f"{r.name:<{w}}  {r.ns:>10.1f}  {ratio:>12}  {goal:>9}  {r.status or '-'}"
            lines.append(line + (f"  ({r.note})" if r.note else ""))
        return "\n".join(lines)

    def print(self, file: Any = None) -> None:
        print(self.format(), file=file or sys.stdout)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "machine": {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
            },
            "meta": self.meta,
            "baselines_ns": self.baselines,
            "rows": [asdict(r) for r in self.rows],
            "ok": self.ok,
        }

    def dump_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, indent=2)
            fh.write("\n")

    def finish(self, args: argparse.Namespace) -> int:
        """Print, dump ``--json`` if given; exit status 1 if any goal was missed."""
        self.print()
        if getattr(args, "json", None):
            self.dump_json(args.json)
        return 0 if self.ok else 1


def add_report_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--repeat", type=int, default=25, help="timing repeats per case")
    return parser


def bench_main(
    description: str | None,
    run: Callable[..., Sequence[Report]],
    argv: list[str] | None = None,
    quick_help: str = "small smoke run",
) -> int:
    """The command line every bench script shares: ``--quick``, ``--repeat``, ``--json PATH``.

    ``run(quick=..., repeat=...)`` returns the reports; they are printed (and dumped as JSON when
    asked), and the exit status is 1 when a goal was missed.
    """
    parser = add_report_args(argparse.ArgumentParser(description=description))
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    reports = run(quick=args.quick, repeat=args.repeat)
    for report in reports:
        report.print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
    return 0 if all(r.ok for r in reports) else 1
