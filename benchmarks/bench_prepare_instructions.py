"""Issue 14, prepare and pickup in callgrind instructions: repeatable on a loaded host where timings are not.

    .venv/bin/python benchmarks/bench_prepare_instructions.py [--cases json.loads,prepare,...] [--before TREE]

Each case runs in its own process under ``valgrind --tool=callgrind``, collecting only inside one
``functools.reduce`` call that wraps one call of the case (after one warm-up call and the same
set-up), so the count is the case alone. gc is enabled for every case (the same gc state as the
``json.loads`` baseline). Cases, on the 10k-rule synthetic bundle (``bench_table.bundle_bytes``):

* ``json.loads``: the baseline;
* ``parse``: ``parse_bundle(raw)`` (validate, duplicate keys, limits, canonical digest);
* ``prepare``: ``RuleTable.from_bundle(parse_bundle(raw))``;
* ``trusted``: ``parse_bundle(canonical, trusted_digest=digest)``, what a follower parses;
* ``pickup``: the trusted parse and the compile, what a follower does per new version;
* ``compile``: ``RuleTable.from_bundle(bundle)`` alone.

``--before TREE`` runs the same cases on the library in ``TREE`` (e.g. ``git archive a9d65e7 | tar
-x -C /tmp/base``). A run takes one to three CPU minutes per case.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("json.loads", "parse", "prepare", "trusted", "pickup", "compile")


def _cases(raw: bytes) -> dict[str, Callable[[], Any]]:
    from rule_engine import RuleTable, parse_bundle

    bundle = parse_bundle(raw)
    RuleTable.from_bundle(bundle)  # warm the shape cache, as in a serving process
    canonical, digest = bundle.canonical.encode(), bundle.digest
    cases: dict[str, Callable[[], Any]] = {
        "json.loads": lambda: json.loads(raw),
        "parse": lambda: parse_bundle(raw),
        "prepare": lambda: RuleTable.from_bundle(parse_bundle(raw)),
        "trusted": lambda: parse_bundle(canonical, trusted_digest=digest),
        "pickup": lambda: RuleTable.from_bundle(parse_bundle(canonical, trusted_digest=digest)),
        "compile": lambda: RuleTable.from_bundle(bundle),
    }
    return cases


def child(case: str, path: str) -> None:
    """Set up, warm up, then run ``case`` once inside ``functools.reduce`` (what callgrind collects)."""
    fn = _cases(Path(path).read_bytes()).get(case)
    if fn is None:
        return
    fn()
    functools.reduce(lambda _, __: fn(), [0, 1])


def instructions(case: str, path: str, tree: str | None) -> int | None:
    """Instructions callgrind counts inside the case's reduce call (None: the library lacks the case)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=functools_reduce",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            case,
            path,
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=3600, env=env, cwd=tree or HERE.parent)
        with open(out, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
                    return total or None
    return None


def main(argv: list[str] | None = None) -> int:
    """Print instructions per case and the ratio to ``json.loads`` of the same library."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases (json.loads is always run)")
    parser.add_argument("--before", metavar="TREE", help="also run the cases on the library in TREE")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    sys.path[:0] = [str(HERE), str(HERE.parent / "bundles")]
    from bench_table import bundle_bytes

    cases = ["json.loads", *(c for c in args.cases.split(",") if c and c != "json.loads")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bundle10k.json")
        Path(path).write_bytes(bundle_bytes(50, 20))
        for label, tree in (("after", None), ("before", args.before)) if args.before else (("after", None),):
            base: int | None = None
            for case in cases:
                count = instructions(case, path, tree)
                if count is None:
                    print(f"{label:6s} {case:11s} (not in this library)", flush=True)
                    continue
                base = base or count
                print(
                    f"{label:6s} {case:11s} {count / 1e6:9.1f} M instructions {count / base:6.2f}x json.loads",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
