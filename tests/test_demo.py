"""``rule-engine demo``: the story it tells, and the traffic it is built on."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rule_engine import RuleTable, load_bundle
from rule_engine.cli.demo import bundle_text, make_event

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SCRIPT = Path(sys.executable).parent / "rule-engine"


def test_demo_events_break_v3_on_string_session_ages_only() -> None:
    """About half the demo's events break gateway-v3 at run time; v1 and v2 decide every one of them."""
    tables = {name: RuleTable.from_bundle(load_bundle(BUNDLES / f"gateway-{name}.json")) for name in ("v1", "v2")}
    broken = RuleTable.from_bundle(load_bundle(BUNDLES / "gateway-v3-broken.json"))
    rng = random.Random(1)
    errors = 0
    for _ in range(2000):
        event, key = make_event(rng)
        assert key == event["user"]["id"]
        for table in tables.values():
            table.evaluate(event)  # raises on a run-time error
        string_age = isinstance(event.get("session", {}).get("age_secs"), str)
        try:
            broken.evaluate(event)
        except Exception:
            errors += 1
            assert string_age
    assert 0.35 < errors / 2000 < 0.65


def test_demo_reads_the_packaged_example_bundles() -> None:
    """The demo's bundles are the example bundles, byte for byte."""
    for name in ("gateway-v1.json", "gateway-v2.json", "gateway-v3-broken.json"):
        assert bundle_text(name) == (BUNDLES / name).read_text(encoding="utf-8")


def test_demo_tells_the_whole_story_in_a_subprocess() -> None:
    """demo --fast: v1 blue-green, v2 canaried to ACTIVE, v3 rolled back automatically with its reason."""
    started = time.monotonic()
    result = subprocess.run(
        [str(SCRIPT), "demo", "--fast"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert elapsed < 40
    assert "store: sqlite:///" in out
    assert re.search(r"v2 stage [123]/4 .*% to candidate", out)  # the live timeline of the canary
    assert re.search(r"^  v1 +gateway-access@1\.0\.0\S* +SUPERSEDED", out, re.MULTILINE)
    assert re.search(r"^  v2 +gateway-access@2\.0\.0\S* +ACTIVE", out, re.MULTILINE)
    assert re.search(r"^  v3 +gateway-access@3\.0\.0\S* +ROLLED_BACK .*reason: error rate \d+\.\d% > 5\.0%", out, re.M)
    assert re.search(r"rolled back: v3 by controller: error rate", out)
    assert re.search(r"now serving: v2 \(gateway-access@2\.0\.0", out)


ROOT = BUNDLES.parent


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run runs the README's test command verbatim, with CI=true and no stdin."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script
    assert "export CI=true" in script
    assert "exec </dev/null" in script
    assert script.rstrip().splitlines()[-1] == command


def test_readme_python_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's library example runs as written from the repository root."""
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md:example", "exec"), {"__name__": "readme_example"})
