"""Smoke test of the benchmark suite: it runs from one command and prints ratios (timings are never asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_run_all_quick_runs_and_prints_every_figure_as_a_ratio(tmp_path: Path) -> None:
    """`benchmarks/run_all.py --quick` exits 0, prints ratios with goals and writes its JSON."""
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--no-peers", "--json", str(out_json)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for title in (
        "issue 2: RuleTable.evaluate",
        "issue 2: prepare",
        "issue 2: memory",
        "issue 3: data plane",
        "issue 3: swap latency",
        "issue 3: RuleEngine.evaluate in 2 reader threads",
        "issue 4: health recording",
    ):
        assert title in out
    assert re.search(r"\d+\.\d+x ideal\s+<= 1\.5x\s+(PASS|MISS)", out)
    assert re.search(r"== summary: \d+ of \d+ goals PASS", out)
    figures = json.loads(out_json.read_text(encoding="utf-8"))
    rows = [row for report in figures["reports"] for row in report["rows"]]
    assert rows
    assert all(row["ratio"] is not None and row["baseline"] for row in rows)
