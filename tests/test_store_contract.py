"""One contract suite, run against every state store backend."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import BlueGreen
from rule_engine.errors import ConflictError, StoreError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import StateStore, open_store
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    backend: StateStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "state.db")
    yield backend
    backend.close()


def _record(version_id: str, seq: int, state: DeploymentState = DeploymentState.STAGED) -> VersionRecord:
    return VersionRecord(
        version_id=version_id,
        seq=seq,
        bundle_id="b",
        bundle_version="1",
        digest=f"digest-{version_id}",
        deployed_by="alice",
        strategy=BlueGreen(),
        state=state,
        created_at=100.0,
        updated_at=100.0 + seq,
    )


def _state(*records: VersionRecord, active: str | None = None) -> ControlState:
    return ControlState(
        next_seq=len(records) + 1,
        versions=MappingProxyType({r.version_id: r for r in records}),
        active=active,
        lineage=(active,) if active else (),
    )


def _entry(version_id: str, action: str = "prepare") -> AuditEntry:
    return AuditEntry(at=1.0, action=action, version_id=version_id, from_state=None, to_state="staged", actor="bob")


def test_new_store_is_empty_at_revision_zero(store: StateStore) -> None:
    """A new store loads an empty state at revision 0, with no bundles, audit or health."""
    assert store.load() == ControlState()
    assert store.revision() == 0
    assert store.bundle_json("x") is None
    assert store.audit_log() == []
    assert store.health(["x"]) == {"x": HealthCounts()}


def test_commit_bumps_revision_and_load_returns_it(store: StateStore) -> None:
    """A commit writes the state as the next revision; load and revision see it."""
    state = _state(_record("v1", 1, DeploymentState.ACTIVE), active="v1")
    committed = store.commit(0, state, bundles={"v1": '{"a":1}'}, audit=[_entry("v1")])
    assert committed.revision == 1
    assert store.revision() == 1
    assert store.load() == replace(state, revision=1)
    assert store.bundle_json("v1") == '{"a":1}'


def test_stale_revision_conflicts_and_writes_nothing(store: StateStore) -> None:
    """A commit against a stale revision raises ConflictError and leaves state, bundles and audit untouched."""
    first = store.commit(0, _state(_record("v1", 1)), bundles={"v1": "{}"}, audit=[_entry("v1")])
    with pytest.raises(ConflictError, match="expected revision 0, found 1"):
        store.commit(0, _state(_record("v2", 1)), bundles={"v2": "{}"}, audit=[_entry("v2")], evicted=["v1"])
    assert store.load() == first
    assert store.bundle_json("v2") is None
    assert store.bundle_json("v1") == "{}"
    assert [e.version_id for e in store.audit_log()] == ["v1"]


def test_evicted_bundles_are_dropped(store: StateStore) -> None:
    """Bundles named in ``evicted`` are gone after the commit; others stay."""
    store.commit(0, _state(_record("v1", 1), _record("v2", 2)), bundles={"v1": "1", "v2": "2"})
    store.commit(1, _state(_record("v2", 2)), evicted=["v1"])
    assert store.bundle_json("v1") is None
    assert store.bundle_json("v2") == "2"


def test_audit_keeps_order_filters_and_limits(store: StateStore) -> None:
    """Audit entries come back oldest first with increasing seq, by version, and the last ``limit``."""
    store.commit(0, _state(), audit=[_entry("v1"), _entry("v2")])
    store.commit(1, _state(), audit=[_entry("v1", "activate")])
    log = store.audit_log()
    assert [(e.version_id, e.action) for e in log] == [("v1", "prepare"), ("v2", "prepare"), ("v1", "activate")]
    seqs = [e.seq for e in log]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert [e.action for e in store.audit_log("v1")] == ["prepare", "activate"]
    assert [e.version_id for e in store.audit_log(limit=2)] == ["v2", "v1"]
    assert replace(log[0], seq=None) == _entry("v1")


def test_health_adds_sums_windows_and_prunes(store: StateStore) -> None:
    """Deltas add up per bucket; ``since`` sums buckets from it; pruning keeps lifetime totals."""
    store.add_health("v1", 0.0, HealthCounts(10, 1, 0, 100.0, (0, 2), {"allow": 3}))
    store.add_health("v1", 0.0, HealthCounts(5, 0, 1, 50.0, (1,), {"allow": 1, "deny": 2}))
    store.add_health("v1", 10.0, HealthCounts(7, 2, 0, 70.0))
    store.add_health("v2", 10.0, HealthCounts(3))
    assert store.health(["v1"], since=0.0)["v1"] == HealthCounts(22, 3, 1, 220.0, (1, 2), {"allow": 4, "deny": 2})
    assert store.health(["v1", "v2"], since=5.0) == {"v1": HealthCounts(7, 2, 0, 70.0), "v2": HealthCounts(3)}
    store.prune_health(before=5.0)
    assert store.health(["v1"], since=0.0)["v1"] == HealthCounts(7, 2, 0, 70.0)
    assert store.health(["v1"])["v1"].evaluations == 22  # lifetime survives pruning
    assert store.health(["unknown"], since=0.0) == {"unknown": HealthCounts()}


def test_add_health_many_adds_every_delta(store: StateStore) -> None:
    """``add_health_many`` counts each delta once."""
    store.add_health_many([("v1", 0.0, HealthCounts(1)), ("v1", 5.0, HealthCounts(2)), ("v2", 0.0, HealthCounts(4))])
    assert store.health(["v1", "v2"]) == {"v1": HealthCounts(3), "v2": HealthCounts(4)}


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
