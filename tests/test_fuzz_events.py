"""Fuzzing events and keys through RuleEngine.evaluate during a canary and an A/B test, in a subprocess.

The worker (``tests/_fuzz_events_worker.py``) runs hypothesis over hostile events and routing keys;
a crash of the interpreter (a C extension's SIGSEGV, as D1 was) shows here as a non-zero exit
status instead of killing pytest. ``RULE_ENGINE_SOAK=1`` runs many more examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "_fuzz_events_worker.py"
SOAK = os.environ.get("RULE_ENGINE_SOAK") == "1"
EXAMPLES = 20_000 if SOAK else (400 if os.environ.get("CI") else 250)


@pytest.mark.parametrize("mode", ["canary", "ab"])
def test_hostile_events_and_keys_never_raise_or_crash_and_counts_add_up(mode: str) -> None:
    """Any event or key: evaluate answers, the process survives, and each arm counts exactly its calls."""
    result = subprocess.run(
        [sys.executable, str(WORKER), mode, str(EXAMPLES), "20261201"],
        capture_output=True,
        text=True,
        timeout=3600 if SOAK else 300,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    summary = json.loads(result.stdout.splitlines()[-1])
    print(f"[fuzz events] {summary}")
    assert summary["examples"] >= EXAMPLES // 2
    assert summary["calls"] >= summary["examples"]
    assert summary["stable"] > 0
    assert summary["candidate"] > 0
    assert summary["fallbacks"] > 0, "no event broke the candidate: the error path was not exercised"
    assert summary["candidate_counted"] == summary["candidate"]
