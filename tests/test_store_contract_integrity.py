"""The integrity part of the store contract (identity, continuity, audit chain), run against every backend.

Written to move into the reusable contract base class: every test takes only the ``store`` fixture
(a new, empty store) and ``reopen`` (the same store opened again, or None for a backend whose
state dies with the object).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from rule_engine.errors import ConflictError
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import GENESIS, StoreMark, audit_hash
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore
from tests import _support_stores as kit

Reopen = Callable[[], StateStore] | None


def _postgres(request: pytest.FixtureRequest) -> Callable[[bool], StateStore]:
    """A new PostgreSQL database per call; ``make(create)`` opens a store on the last one."""
    from rule_engine.stores.postgres import PostgresStore

    server = request.getfixturevalue("pg_server")
    databases: list[str] = []

    def make(create: bool, new: bool = False) -> StateStore:
        if new or not databases:
            databases.append(server.create_database())
            request.addfinalizer(lambda name=databases[-1]: server.drop_database(name))
        return PostgresStore(databases[-1], create=create)

    return make


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[StateStore, Reopen]]:
    opened: list[StateStore] = []
    kind = request.param
    pg = _postgres(request) if kind == "postgres" else None

    def reopen() -> StateStore:
        opened.append(pg(False) if pg is not None else SQLiteStore(tmp_path / "state.db", create=False))
        return opened[-1]

    store: StateStore = (
        MemoryStore() if kind == "memory" else pg(True) if pg is not None else SQLiteStore(tmp_path / "state.db")
    )
    opened.append(store)
    yield store, (reopen if kind != "memory" else None)
    for each in opened:
        each.close()


def _is_postgres(store: StateStore) -> bool:
    return type(store).__name__ == "PostgresStore"


def _another(store: StateStore, tmp_path: Path, request: pytest.FixtureRequest) -> StateStore:
    """A second store of the same backend, created apart."""
    if isinstance(store, MemoryStore):
        return MemoryStore()
    if isinstance(store, SQLiteStore):
        return SQLiteStore(tmp_path / "other.db")
    return _postgres(request)(True, True)


def test_a_store_has_a_stable_identity(backend: tuple[StateStore, Reopen]) -> None:
    """identity() is a non-empty id, the same before and after commits, and the same when reopened."""
    store, reopen = backend
    first = store.identity()
    assert isinstance(first, str)
    assert len(first) >= 16
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1")])
    assert store.identity() == first
    assert store.mark() == StoreMark(first, 1)
    if reopen is not None:
        assert reopen().identity() == first


def test_two_stores_have_different_identities(
    backend: tuple[StateStore, Reopen], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two stores created apart never share an identity."""
    store, _ = backend
    other = _another(store, tmp_path, request)
    assert other.identity() != store.identity()
    other.close()


def test_a_new_store_has_a_sound_empty_audit_chain(backend: tuple[StateStore, Reopen]) -> None:
    """verify_audit() of a new store is ok with nothing checked and no head."""
    store, _ = backend
    check = store.verify_audit()
    assert (check.ok, check.checked, check.first_bad_seq, check.head, check.unhashed) == (True, 0, None, None, 0)


def test_every_commit_extends_the_audit_chain(backend: tuple[StateStore, Reopen]) -> None:
    """Entries written by commits are chained: verify_audit checks them all and its head is the last hash."""
    store, reopen = backend
    state = store.commit(0, kit.state("v1"), audit=[kit.entry("v1"), kit.entry("v1", "carol")])
    store.commit(state.revision, kit.state("v1", "v2"), audit=[kit.entry("v2")])
    entries = store.audit_log()
    assert [e.seq for e in entries] == [1, 2, 3]
    previous = GENESIS
    for entry, revision in zip(entries, (1, 1, 2), strict=True):
        previous = audit_hash(previous, entry, revision)
    check = store.verify_audit()
    assert (check.ok, check.checked, check.head) == (True, 3, previous)
    if reopen is not None:
        assert reopen().verify_audit() == check


def test_a_refused_commit_leaves_the_chain_unchanged(backend: tuple[StateStore, Reopen]) -> None:
    """A conflicting commit writes no audit entry and does not move the chain's head."""
    store, _ = backend
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1")])
    before = store.verify_audit()
    with pytest.raises(ConflictError):
        store.commit(0, kit.state("v1"), audit=[kit.entry("v1", "mallory")])
    assert store.verify_audit() == before
    assert [e.actor for e in store.audit_log()] == ["bob"]


def test_the_chain_hashes_entries_whatever_their_text(backend: tuple[StateStore, Reopen]) -> None:
    """Actors with quotes, newlines, escapes and non-ASCII text are chained and verify."""
    store, _ = backend
    odd = ['"', "a\nb", "é 漢字 🙂", "\\u0000"]
    if not _is_postgres(store):  # PostgreSQL text cannot hold NUL (a StoreError there: see test_postgres_store)
        odd.append("\x00")
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1", actor) for actor in odd])
    check = store.verify_audit()
    assert (check.ok, check.checked) == (True, len(odd))


def test_the_verdict_reads_as_one_line_and_as_json(backend: tuple[StateStore, Reopen]) -> None:
    """AuditCheck.summary() names the count and head; to_dict() carries every field."""
    store, _ = backend
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1")])
    check = store.verify_audit()
    assert check.summary() == f"audit chain ok: 1 entries checked, head {check.head}"
    assert check.to_dict() == {
        "ok": True, "checked": 1, "first_bad_seq": None, "reason": "", "head": check.head, "unhashed": 0,
    }  # fmt: skip
    broken = replace(check, ok=False, first_bad_seq=3, reason="entry 3 does not match its hash")
    assert broken.summary() == "audit chain broken at entry 3: entry 3 does not match its hash"
