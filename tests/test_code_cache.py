"""The on-host code cache (issue 14, pickup): shared compiled shapes, never trusted unchecked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rule_engine import RuleTable, parse_bundle
from rule_engine.evaluation import codecache, compiler
from rule_engine.evaluation.codecache import ENVIRONMENT, CodeCache, environment_cache

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the code cache is POSIX only")

BUNDLE = {
    "bundle_id": "cache",
    "version": "1",
    "rules": [
        {"id": "gold", "when": {"field": "tier", "op": "eq", "value": "gold"}, "then": {"decision": "fast"}},
        {
            "id": "risky",
            "when": {
                "all": [
                    {"field": "geo.country", "op": "in", "value": ["KP", "IR"]},
                    {"field": "risk", "op": "gte", "value": 7},
                ]
            },
            "then": {"decision": "deny"},
        },
        {
            "id": "path",
            "when": {"not": {"field": "path", "op": "starts_with", "value": "/api"}},
            "then": {"decision": "web"},
        },
    ],
}
EVENTS = [
    {"tier": "gold"},
    {"geo": {"country": "KP"}, "risk": 9, "path": "/api/x"},
    {"geo": {"country": "US"}, "risk": 9, "path": "/api/x"},
    {"path": "/home"},
]


@pytest.fixture(autouse=True)
def _cold_compiler() -> Iterator[None]:
    """Every test starts and ends with no code cache installed and an empty shape cache."""
    compiler.use_code_cache(None)
    compiler.clear_shape_cache()
    yield
    compiler.use_code_cache(None)
    compiler.clear_shape_cache()


def _answers(cache: CodeCache | None) -> list[tuple[str, str | None]]:
    """Compile BUNDLE in a cold compiler using ``cache`` (as a new process would) and decide EVENTS."""
    compiler.clear_shape_cache()
    compiler.use_code_cache(cache)
    table = RuleTable.from_bundle(parse_bundle(_text()))
    return [(d.decision, d.rule_id) for d in map(table.evaluate, EVENTS)]


def _text() -> str:
    import json

    return json.dumps(BUNDLE)


def _entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.code"))


def test_a_second_process_reads_the_shapes_the_first_compiled(tmp_path: Path) -> None:
    """The first cache compiles and stores every shape; a fresh one on the same directory only reads."""
    expected = _answers(None)
    first = CodeCache(tmp_path / "cache")
    assert _answers(first) == expected
    assert first.stored == 3
    assert first.hits == 0
    entries = _entries(tmp_path / "cache")
    assert len(entries) == 3
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in entries)  # private files
    second = CodeCache(tmp_path / "cache")
    assert _answers(second) == expected
    assert (second.hits, second.misses, second.refused, second.stored) == (3, 0, 0, 0)


@pytest.mark.parametrize("damage", ["flip-payload", "truncate", "other-source", "other-python"])
def test_a_damaged_or_foreign_entry_is_refused_and_the_source_compiled(tmp_path: Path, damage: str) -> None:
    """An entry whose checksum, length, source hash or bytecode magic is wrong is never unmarshalled."""
    expected = _answers(None)
    _answers(CodeCache(tmp_path))
    entries = _entries(tmp_path)
    for path in entries:
        data = bytearray(path.read_bytes())
        if damage == "flip-payload":
            data[-3] ^= 0xFF
        elif damage == "truncate":
            del data[len(data) // 2 :]
        elif damage == "other-python":
            start = len(b"rule-engine code cache 1\n")
            data[start] ^= 0xFF
        path.write_bytes(bytes(data))
    if damage == "other-source":  # each entry moved under another shape's key
        contents = [p.read_bytes() for p in entries]
        for path, data in zip(entries, contents[1:] + contents[:1], strict=True):
            path.write_bytes(data)
    reader = CodeCache(tmp_path)
    assert _answers(reader) == expected
    assert reader.refused == 3
    assert reader.hits == 0


def test_an_entry_others_can_write_or_a_symlink_is_refused(tmp_path: Path) -> None:
    """Only regular files of this user, writable by nobody else, are read."""
    _answers(CodeCache(tmp_path))
    first, second, third = _entries(tmp_path)
    first.chmod(0o620)
    target = tmp_path / "elsewhere"
    target.write_bytes(second.read_bytes())
    second.unlink()
    second.symlink_to(target)
    reader = CodeCache(tmp_path)
    assert _answers(reader) == _answers(None)
    assert reader.refused == 2
    assert reader.hits == 1
    assert third.exists()


@pytest.mark.parametrize("problem", ["group-writable", "symlink", "a-file"])
def test_an_unsafe_directory_disables_the_cache(tmp_path: Path, problem: str) -> None:
    """A directory others can write, a symlinked one or a file: the cache is off, with the reason, nothing read."""
    real = tmp_path / "real"
    _answers(CodeCache(real))
    if problem == "group-writable":
        real.chmod(0o770)
        where = real
    elif problem == "symlink":
        where = tmp_path / "link"
        where.symlink_to(real)
    else:
        where = tmp_path / "file"
        where.write_text("x")
    cache = CodeCache(where)
    assert _answers(cache) == _answers(None)
    assert cache.disabled_reason is not None
    assert (cache.hits, cache.refused, cache.stored) == (0, 0, 0)


def test_a_missing_directory_is_created_private(tmp_path: Path) -> None:
    """The cache directory is created with mode 0700."""
    where = tmp_path / "a" / "b"
    _answers(CodeCache(where))
    assert where.is_dir()
    assert os.stat(where).st_mode & 0o777 == 0o700


def test_the_cache_stops_growing_at_its_bound(tmp_path: Path) -> None:
    """At most ``max_entries`` entries are written, counting those already there."""
    cache = CodeCache(tmp_path, max_entries=2)
    _answers(cache)
    assert cache.stored == 2
    assert len(_entries(tmp_path)) == 2
    again = CodeCache(tmp_path, max_entries=2)
    _answers(again)
    assert again.stored == 0
    assert again.hits == 2


def test_the_environment_names_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RULE_ENGINE_CODE_CACHE set: a manager's publisher installs that cache; unset: none."""
    from rule_engine.deployment.publisher import Publisher

    monkeypatch.delenv(ENVIRONMENT, raising=False)
    assert environment_cache() is None
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path / "env"))
    cache = environment_cache()
    assert cache is not None
    assert cache.directory == tmp_path / "env"
    assert environment_cache() is cache  # one per directory and process
    installed: list[Any] = []
    monkeypatch.setattr("rule_engine.deployment.publisher.use_code_cache", installed.append)
    Publisher(store=None, ledger=None, cache_size=lambda: 1)  # type: ignore[arg-type]
    assert installed == [cache]
    codecache._cache_in.cache_clear()
