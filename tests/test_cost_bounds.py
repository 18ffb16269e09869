"""Cost bounds: bundles at the limits prepare in time and memory linear in their size (D18-D21).

No absolute timings: every figure is a ratio against a baseline measured in the same run (thread
CPU time of ``json.loads`` of the same bytes; the bundle's own size; the same bundle at a quarter
of the size). The bounds are generous (several times the figures ``benchmarks/bench_limits.py``
prints, recorded in docs/performance.md); the defects they close were 100x-1000x over them.
``RULE_ENGINE_SOAK=1`` runs the sizes of the benchmark.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_limits import SIZES, huge_rule_bundle, measure, scaling, shapes_bundle, wide_bundle

SOAK = os.environ.get("RULE_ENGINE_SOAK") == "1"

#: (bundle maker, size in CI, prepare / json.loads, table peak memory / bundle bytes)
CASES: dict[str, tuple[Callable[[int], bytes], int, float, float]] = {
    "wide": (wide_bundle, 4_000, 600, 200),
    "huge": (huge_rule_bundle, 20_000, 200, 40),
    "shapes": (shapes_bundle, 1_000, 1_500, 100),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundles_at_the_limits_prepare_within_a_budget(name: str) -> None:
    """Prepare time is a bounded multiple of json.loads of the same bytes; table memory of its size."""
    make, size, time_bound, memory_bound = CASES[name]
    figures = measure(make(SIZES[name] if SOAK else size), rounds=2)
    print(f"[cost] {name}: {figures}")
    assert figures["prepare_vs_json"] < time_bound, figures
    assert figures["table_peak_vs_bytes"] < memory_bound, figures


@pytest.mark.parametrize("name", ["wide", "huge"])
def test_prepare_time_grows_linearly(name: str) -> None:
    """Four times the size costs about four times the time (bound 8; a quadratic cost gives 16)."""
    make, size, _, _ = CASES[name]
    ratio = scaling(make, size // 4, factor=4)
    print(f"[cost] {name}: 4x size -> {ratio:.2f}x time")
    assert ratio < 8, ratio
