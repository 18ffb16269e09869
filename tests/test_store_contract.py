"""The store contract (``rule_engine.testing.store_contract``) run against every backend, and SQLite's own promises."""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from rule_engine.control.states import DeploymentState
from rule_engine.errors import StoreError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import StateStore, open_store
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore
from rule_engine.testing import audit_entry as _entry
from rule_engine.testing import control_state as _state
from rule_engine.testing import version_record as _record
from rule_engine.testing.store_contract import StoreContractTests


class TestMemoryStore(StoreContractTests):
    """The contract on ``memory://``."""

    @pytest.fixture
    def make_store(self) -> StateStore:
        return MemoryStore()


class TestSQLiteStore(StoreContractTests):
    """The contract on ``sqlite:///...``."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StateStore:
        return SQLiteStore(tmp_path / "state.db")


def test_a_backend_without_make_store_fails_loudly() -> None:
    """A subclass that forgets ``make_store`` errors instead of passing vacuously."""

    class Forgetful(StoreContractTests):
        pass

    base_fixture = StoreContractTests.make_store.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(pytest.fail.Exception, match="Forgetful must provide a make_store fixture"):
        base_fixture(Forgetful())


# --- SQLite only -------------------------------------------------------------------------------------


def test_sqlite_reopen_reproduces_everything(tmp_path: Path) -> None:
    """A reopened SQLite store holds the same state, bundles, audit and health."""
    path = tmp_path / "state.db"
    first = SQLiteStore(path)
    state = first.commit(0, _state(_record("v1", 1, DeploymentState.ACTIVE), active="v1"), bundles={"v1": "{}"})
    first.commit(1, state, audit=[_entry("v1")])
    first.add_health("v1", 5.0, HealthCounts(9, 1))
    audit = first.audit_log()
    first.close()
    again = SQLiteStore(path)
    assert again.load() == replace(state, revision=2)
    assert again.bundle_json("v1") == "{}"
    assert again.audit_log() == audit
    assert again.health(["v1"], since=0.0)["v1"] == HealthCounts(9, 1)
    assert again.integrity_check() == "ok"
    again.close()


def test_sqlite_audit_cannot_be_rewritten(tmp_path: Path) -> None:
    """UPDATE and DELETE on the audit table are refused by the database itself."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.commit(0, _state(), audit=[_entry("v1")])
    store.close()
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")
    assert conn.execute("SELECT actor FROM audit").fetchall() == [("bob",)]
    conn.close()


def test_sqlite_files_are_owner_only(tmp_path: Path) -> None:
    """The state file and its WAL/SHM companions are created with mode 0600, in a created directory."""
    path = tmp_path / "deep" / "dir" / "state.db"
    store = SQLiteStore(path)
    store.commit(0, _state())
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert stat.S_IMODE(os.stat(path.parent / name).st_mode) == 0o600, name
    store.close()


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///rel`` is relative, ``sqlite:////abs`` absolute; ``:memory:`` and unknown options are refused."""
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///sub/rel.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == Path("sub/rel.db")
    relative.close()
    absolute = SQLiteStore.from_url(f"sqlite:///{tmp_path}/abs.db?timeout=0.5")
    assert absolute.path == tmp_path / "abs.db"
    assert absolute.timeout == 0.5
    absolute.close()
    with pytest.raises(StoreURLError, match="memory://"):
        SQLiteStore.from_url("sqlite:///:memory:")
    with pytest.raises(StoreURLError, match="unknown SQLite store option"):
        SQLiteStore.from_url("sqlite:///x.db?mode=ro")


def test_sqlite_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    """Opening a file that is not an SQLite database raises StoreError naming the file."""
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match=r"junk\.db"):
        SQLiteStore(path)


def test_sqlite_missing_file_after_open_is_a_store_error(tmp_path: Path) -> None:
    """A state file moved away after opening makes reads raise StoreError; moving it back heals."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.commit(0, _state())
    path.rename(tmp_path / "elsewhere.db")
    with pytest.raises(StoreError, match="unavailable"):
        store.revision()
    (tmp_path / "elsewhere.db").rename(path)
    assert store.revision() == 1
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.revision()


def test_sqlite_locked_file_is_a_store_error(tmp_path: Path) -> None:
    """While another connection holds the file exclusively, a commit gives up with a 'locked' StoreError."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path, timeout=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreError, match="locked"):
        store.commit(0, _state())
    holder.execute("ROLLBACK")
    holder.close()
    assert store.commit(0, _state()).revision == 1
    store.close()
