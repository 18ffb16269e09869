"""Every ```python block of docs/deployment.md runs as written, so the documentation cannot rot."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deployment.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXAMPLES = BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_the_seven_usage_patterns_are_documented() -> None:
    """docs/deployment.md has one runnable example per usage pattern."""
    assert len(EXAMPLES) == 7


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example-{i + 1}" for i in range(len(EXAMPLES))])
def test_example_runs(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example runs from the repository root without error (its asserts hold)."""
    monkeypatch.chdir(ROOT)
    module = types.ModuleType("docs_example")  # a real module, as when the example runs as a script
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"{DOC.name}:example", "exec"), module.__dict__)
