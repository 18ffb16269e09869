"""Every ```python block of docs/deployment.md runs as written, so the documentation cannot rot."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deployment.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
TEXT = DOC.read_text(encoding="utf-8")
EXAMPLES = BLOCK.findall(TEXT)
# "## 3. A/B test" and its body, up to the next "## " heading
PATTERNS = re.findall(r"^## \d+\. (.+?)\n(.*?)(?=^## |\Z)", TEXT, re.DOTALL | re.MULTILINE)


def test_every_usage_pattern_has_one_example_that_checks_its_outcome() -> None:
    """Each numbered usage pattern has exactly one python example, and each example asserts what it shows."""
    assert PATTERNS, "no numbered usage patterns found in docs/deployment.md"
    for title, body in PATTERNS:
        blocks = BLOCK.findall(body)
        assert len(blocks) == 1, f"{title!r} has {len(blocks)} python examples"
        asserts = [node for node in ast.walk(ast.parse(blocks[0])) if isinstance(node, ast.Assert)]
        assert asserts, f"the example of {title!r} asserts nothing, so running it proves nothing"
    assert len(EXAMPLES) == TEXT.count("```python")  # the block pattern misses none of them


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example-{i + 1}" for i in range(len(EXAMPLES))])
def test_example_runs(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example runs from the repository root without error (its asserts hold)."""
    monkeypatch.chdir(ROOT)
    module = types.ModuleType("docs_example")  # a real module, as when the example runs as a script
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(source, f"{DOC.name}:example", "exec"), module.__dict__)
