"""Store identity and integrity at the store level (D10-D13, D15): regression tests for each defect."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given

from rule_engine import DeploymentManager
from rule_engine.bundle.models import canonical_json, parse_bundle
from rule_engine.control.records import ControlState, Rollout
from rule_engine.control.strategies import Canary
from rule_engine.errors import StoreError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import open_store
from rule_engine.stores.integrity import (
    GENESIS,
    StoreMark,
    audit_hash,
    check_continuity,
    checked_bundle,
    decode_state,
)
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore
from tests import _support_stores as kit
from tests._support_deployment import mini_bundle
from tests.strategies import mutated_documents


def _raw(path: Path, *statements: str) -> None:
    """Run SQL on the file as an attacker with write access would (own connection, no pragmas)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _store_with_history(path: Path, commits: int = 3) -> SQLiteStore:
    store = SQLiteStore(path)
    for revision in range(commits):
        store.commit(revision, kit.state("v1"), audit=[kit.entry(actor=f"actor{revision}")])
    return store


# --- D10: only writes create a store; a store object never adopts another store ---------------------


def test_reading_a_missing_store_raises_and_creates_nothing(tmp_path: Path) -> None:
    """open_store without create on a missing file: reads raise 'no store at ...', no file or directory appears."""
    path = tmp_path / "nonexistent" / "x" / "y.db"
    store = open_store(f"sqlite:///{path}")
    for read in (store.load, store.revision, store.identity, store.audit_log, store.verify_audit):
        with pytest.raises(StoreError, match=r"no store at .*y\.db.*`rule-engine deploy` creates one"):
            read()
    with pytest.raises(StoreError, match="no store at"):
        store.add_health_many([("v1", 0.0, HealthCounts(1))])
    assert not (tmp_path / "nonexistent").exists()
    store.close()


def test_a_manager_on_a_missing_store_refuses_and_creates_nothing(tmp_path: Path) -> None:
    """A manager opened read-only (the CLI's `status`) on a missing store raises StoreError; no file appears."""
    path = tmp_path / "state.db"
    with pytest.raises(StoreError, match="no store at"):
        DeploymentManager.open(f"sqlite:///{path}", create=False, follow=False)
    assert not path.exists()


def test_create_makes_a_store_and_the_first_commit_creates_a_lazy_one(tmp_path: Path) -> None:
    """create=True creates the file at open; without it the first commit creates it (a write creates)."""
    eager = open_store(f"sqlite:///{tmp_path}/eager.db", create=True)
    assert (tmp_path / "eager.db").exists()
    assert eager.revision() == 0
    lazy = open_store(f"sqlite:///{tmp_path}/lazy.db")
    assert not (tmp_path / "lazy.db").exists()
    assert lazy.commit(0, kit.state("v1")).revision == 1
    assert lazy.identity() == SQLiteStore(tmp_path / "lazy.db", create=False).identity()
    eager.close()
    lazy.close()


def test_an_empty_file_is_not_a_store_unless_created(tmp_path: Path) -> None:
    """A zero-byte file at the path is 'no store' for readers and is not turned into one by them."""
    path = tmp_path / "state.db"
    path.touch(mode=0o600)
    with pytest.raises(StoreError, match=r"no store at .*holds no store"):
        SQLiteStore(path, create=False)
    assert path.stat().st_size == 0


def test_a_deleted_store_is_never_recreated_by_a_store_that_used_it(tmp_path: Path) -> None:
    """After the file is deleted, reads and even commits of the same store object raise; no file reappears."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 1)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="unavailable"):
        store.revision()
    with pytest.raises(StoreError, match="unavailable"):
        store.commit(1, kit.state("v1"))
    assert not path.exists()
    store.close()


def test_a_recreated_store_is_refused_by_a_store_that_used_the_old_one(tmp_path: Path) -> None:
    """A store deleted and created again at the same path has a new identity: the old object refuses it."""
    path = tmp_path / "state.db"
    store = _store_with_history(path)
    first = store.identity()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    SQLiteStore(path).close()  # someone (an operator's `deploy`) creates a new, empty store
    for read in (store.revision, store.load, store.identity):
        with pytest.raises(StoreError, match=f"replaced or recreated.*{first}"):
            read()
    with pytest.raises(StoreError, match="replaced or recreated"):
        store.commit(0, kit.state("v9"))
    assert SQLiteStore(path, create=False).revision() == 0  # nothing was written to the new store
    store.close()


def test_an_older_backup_put_in_place_is_refused(tmp_path: Path) -> None:
    """A store restored from an older backup (revision 4 -> 2) is refused: revision went backwards."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 2)
    backup = tmp_path / "backup.db"
    kit.backup(path, backup)
    store.commit(2, kit.state("v1"))
    store.commit(3, kit.state("v1"))
    assert store.revision() == 4
    os.chmod(backup, 0o600)
    for name in ("state.db-wal", "state.db-shm"):  # a restore replaces the file and drops its journal
        (tmp_path / name).unlink(missing_ok=True)
    os.replace(backup, path)
    with pytest.raises(StoreError, match="went backwards from 4 to 2"):
        store.revision()
    with pytest.raises(StoreError, match="went backwards"):
        store.load()
    assert SQLiteStore(path, create=False).revision() == 2  # a new process may adopt it deliberately
    store.close()


def test_continuity_rule() -> None:
    """check_continuity: first sight and growth pass; another identity or a lower revision give a reason."""
    assert check_continuity(None, StoreMark("a", 0)) is None
    assert check_continuity(StoreMark("a", 3), StoreMark("a", 3)) is None
    assert check_continuity(StoreMark("a", 3), StoreMark("a", 9)) is None
    assert "replaced or recreated" in str(check_continuity(StoreMark("a", 3), StoreMark("b", 3)))
    assert "replaced or recreated" in str(check_continuity(StoreMark("a", 3), StoreMark("b", 99)))
    assert "went backwards from 3 to 2" in str(check_continuity(StoreMark("a", 3), StoreMark("a", 2)))


def test_the_identity_cannot_be_changed_in_the_file(tmp_path: Path) -> None:
    """A trigger refuses UPDATE of meta.store_id."""
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    with pytest.raises(sqlite3.IntegrityError, match="identity never changes"):
        _raw(path, "UPDATE meta SET store_id = 'forged'")


# --- D11: bundles read back are checked against their digests ---------------------------------------


def test_a_stored_bundle_is_checked_against_its_recorded_digest() -> None:
    """checked_bundle parses a stored bundle; one changed value is a StoreError naming version and digests."""
    bundle = parse_bundle(json.dumps(mini_bundle()))
    record = kit.record("mini@1.0.0+abc.1", digest=bundle.digest)
    text = canonical_json(bundle)
    assert checked_bundle(record, text).digest == bundle.digest
    tampered = text.replace('"decision":"deny"', '"decision":"allow"')
    assert tampered != text
    other = parse_bundle(tampered).digest
    with pytest.raises(StoreError, match=rf"'mini@1\.0\.0\+abc\.1'.*recorded {bundle.digest}.*{other}"):
        checked_bundle(record, tampered)
    with pytest.raises(StoreError, match="not a valid bundle"):
        checked_bundle(record, text[:-5])
    with pytest.raises(StoreError, match="not text"):
        checked_bundle(record, b"{}")


# --- D12: corrupt rows are StoreError ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "read", "message"),
    [
        ("UPDATE state SET json = '[]'", "load", "JSON list, not an object"),
        ("UPDATE state SET json = '{\"schema\": 1'", "load", "unreadable"),
        ('UPDATE state SET json = replace(json, \'"active":"v1"\', \'"active":"ghost"\')', "load", "ghost"),
        ('UPDATE state SET json = replace(json, \'"bundle_id":"mini"\', \'"bundle_id":7\')', "load", "not text"),
        ("UPDATE state SET json = x'00ff'", "load", "not text"),
        ("UPDATE deployments SET revision = 'abc'", "revision", "revision is not a non-negative integer"),
        ("UPDATE deployments SET revision = -1", "load", "revision is not a non-negative integer"),
        ("UPDATE deployments SET audit_chain_from = 'x'", "verify_audit", "audit_chain_from"),
        ("DELETE FROM meta", "revision", "meta row .* is missing"),
        ("UPDATE health_lifetime SET counts = '[]'", "health", "health counters are corrupt"),
        ("UPDATE bundles SET json = x'00'", "bundle", "not text"),
    ],
)
def test_corrupt_rows_are_store_errors(tmp_path: Path, statement: str, read: str, message: str) -> None:
    """Every corrupt row found in the file is a StoreError that says what is wrong, never another exception."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.commit(0, kit.state("v1"), bundles={"v1": "{}"}, audit=[kit.entry()])
    store.add_health("v1", 0.0, HealthCounts(1))
    _raw(path, statement)
    reads = {
        "load": store.load,
        "revision": store.revision,
        "verify_audit": store.verify_audit,
        "health": lambda: store.health(["v1"]),
        "bundle": lambda: store.bundle_json("v1"),
    }
    with pytest.raises(StoreError, match=message):
        reads[read]()
    store.close()


def test_a_corrupt_audit_row_is_a_store_error_and_a_failed_check(tmp_path: Path) -> None:
    """An audit row with a mistyped column: audit_log raises StoreError, verify_audit reports it."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 2)
    _raw(path, "DROP TRIGGER audit_no_update", "UPDATE audit SET at = 'yesterday' WHERE seq = 2")
    with pytest.raises(StoreError, match=r"audit entry .* is corrupt"):
        store.audit_log()
    check = store.verify_audit()
    assert (check.ok, check.checked, check.first_bad_seq) == (False, 1, 2)
    store.close()


_MINI_TEXT = canonical_json(parse_bundle(json.dumps(mini_bundle())))
_REALISTIC = ControlState(
    revision=3,
    next_seq=3,
    versions=MappingProxyType({"v1": kit.record("v1", 1), "v2": kit.record("v2", 2)}),
    active="v1",
    rollout=Rollout("canary", "v2", "v1", 500, 0, 10.0, 10.0, "salt"),
    lineage=("v1",),
).to_dict()
_REALISTIC["versions"][1]["strategy"] = Canary([5, 50, 100], 60).to_dict()


@given(mutated_documents(_REALISTIC))
def test_any_mutated_state_document_decodes_or_is_a_store_error(text: str) -> None:
    """Whatever edits are made to a stored state document, decoding it returns a state or raises StoreError."""
    try:
        state = decode_state(text, 3, "'state.db'")
    except StoreError:
        return
    assert state.revision == 3
    json.dumps(state.to_dict())  # what decoded can be written back
    store = MemoryStore()
    store.commit(0, state, bundles=dict.fromkeys(state.versions, _MINI_TEXT))
    with contextlib.suppress(StoreError):  # a manager serves it or refuses it with a StoreError, nothing else
        DeploymentManager.open(store, follow=False).route("user-1")


# --- D13: the audit cannot be rewritten unnoticed -----------------------------------------------------


def test_insert_or_replace_cannot_overwrite_an_audit_entry(tmp_path: Path) -> None:
    """The D13 attack, `INSERT OR REPLACE INTO audit (seq, ...)` on entry 1, is refused by the file itself."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 1)
    attack = (
        "INSERT OR REPLACE INTO audit (seq, at, action, version_id, from_state, to_state, actor, reason,"
        " strategy, revision, deployment) VALUES (1, 1.0, 'prepare', 'v1', NULL, 'staged', 'mallory', '', NULL, 1,"
        " (SELECT name FROM deployments))"
    )
    for sql in (attack, attack.replace("INSERT OR REPLACE", "REPLACE")):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            _raw(path, sql)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        _raw(path, "DROP TRIGGER audit_no_overwrite", "PRAGMA recursive_triggers=ON", attack)  # the DELETE trigger
    assert [e.actor for e in store.audit_log()] == ["actor0"]
    assert store.verify_audit().ok
    store.close()


@pytest.mark.parametrize(
    ("statements", "first_bad"),
    [
        (["UPDATE audit SET actor = 'mallory' WHERE seq = 2"], 2),
        (["UPDATE audit SET reason = 'forged', hash = NULL WHERE seq = 3"], 3),
        (["DELETE FROM audit WHERE seq = 2"], 3),
        (["DELETE FROM audit WHERE seq = 3"], 3),
        (["INSERT INTO audit (seq, at, action, version_id, to_state, actor, reason, revision, hash, deployment)"
          " VALUES (4, 9.0, 'activate', 'v1', 'active', 'mallory', '', 3, 'deadbeef', (SELECT name FROM deployments))"], 4),
        (["UPDATE audit SET revision = 9 WHERE seq = 1"], 1),
        (["UPDATE deployments SET audit_head = 'feed'"], 4),
        (["UPDATE deployments SET audit_chain_from = 3"], 3),
    ],
)  # fmt: skip
def test_every_audit_rewrite_is_detected(tmp_path: Path, statements: list[str], first_bad: int) -> None:
    """With the triggers bypassed, a changed, removed, forged or unlinked entry fails verify_audit at that seq."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 3)
    _raw(path, "DROP TRIGGER audit_no_update", "DROP TRIGGER audit_no_delete", *statements)
    check = store.verify_audit()
    assert not check.ok
    assert check.first_bad_seq == first_bad, check
    assert check.reason
    store.close()


def test_a_full_chain_rewrite_changes_the_head(tmp_path: Path) -> None:
    """Someone who recomputes every hash passes verify_audit, but the head differs from a copy kept elsewhere."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 2)
    kept = store.verify_audit().head
    forged = [replace(e, actor="mallory") for e in store.audit_log()]
    previous = GENESIS
    statements = ["DROP TRIGGER audit_no_update"]
    for entry, revision in zip(forged, (1, 2), strict=True):
        previous = audit_hash(previous, entry, revision)
        statements.append(f"UPDATE audit SET actor = '{entry.actor}', hash = '{previous}' WHERE seq = {entry.seq}")
    statements.append(f"UPDATE deployments SET audit_head = '{previous}'")
    _raw(path, *statements)
    check = store.verify_audit()
    assert check.ok
    assert check.head != kept
    store.close()


# Schema 1, as written by rule_engine up to commit 0707af9 (kept verbatim to test the upgrade).
_SCHEMA_1 = """
CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), schema_version INTEGER NOT NULL, revision INTEGER NOT NULL);
CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL);
CREATE TABLE bundles (version_id TEXT PRIMARY KEY, digest TEXT NOT NULL, json TEXT NOT NULL);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, action TEXT NOT NULL, version_id TEXT NOT NULL,
    from_state TEXT, to_state TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL, strategy TEXT,
    revision INTEGER NOT NULL
);
CREATE INDEX audit_by_version ON audit (version_id, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE health (version_id TEXT NOT NULL, bucket_start REAL NOT NULL, counts TEXT NOT NULL,
    PRIMARY KEY (version_id, bucket_start));
CREATE INDEX health_by_start ON health (bucket_start);
CREATE TABLE health_lifetime (version_id TEXT PRIMARY KEY, counts TEXT NOT NULL);
INSERT INTO meta (id, schema_version, revision) VALUES (1, 1, 2);
INSERT INTO audit (at, action, version_id, from_state, to_state, actor, reason, strategy, revision)
    VALUES (1.0, 'prepare', 'v1', NULL, 'staged', 'alice', '', 'blue-green', 1),
           (2.0, 'activate', 'v1', 'staged', 'active', 'alice', '', 'blue-green', 2);
"""


def _schema_1_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_1)
    conn.execute("INSERT INTO state (id, json) VALUES (1, ?)", (json.dumps(kit.state("v1").to_dict()),))
    conn.commit()
    conn.close()
    os.chmod(path, 0o600)


def test_a_schema_1_store_is_upgraded_in_place_and_its_chain_starts_after_old_entries(tmp_path: Path) -> None:
    """A store written by the previous version opens: same state and audit, an identity, a chain from entry 3."""
    path = tmp_path / "state.db"
    _schema_1_store(path)
    store = SQLiteStore(path, create=False)
    assert store.revision() == 2
    assert store.load().active == "v1"
    assert [(e.seq, e.action) for e in store.audit_log()] == [(1, "prepare"), (2, "activate")]
    identity = store.identity()
    check = store.verify_audit()
    assert (check.ok, check.checked, check.unhashed) == (True, 0, 2)
    store.commit(2, kit.state("v1"), audit=[replace(kit.entry(), origin="bob@host")])
    check = store.verify_audit()
    assert (check.ok, check.checked, check.unhashed) == (True, 1, 2)
    assert [e.origin for e in store.audit_log()] == [None, None, "bob@host"]  # the origin column came with it
    store.close()
    again = SQLiteStore(path, create=False)
    assert again.identity() == identity
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        _raw(path, "INSERT OR REPLACE INTO audit (seq, at, action, version_id, to_state, actor, reason, revision)"
             " VALUES (1, 1.0, 'prepare', 'v1', 'staged', 'mallory', '', 1)")  # fmt: skip
    again.close()


# --- D15: symlinks and permissive modes --------------------------------------------------------------


@pytest.mark.parametrize("companion", ["", "-wal", "-shm"])
def test_a_symlink_at_the_store_path_is_refused(tmp_path: Path, companion: str) -> None:
    """A symbolic link planted at the store path or its -wal/-shm is refused; its target is left untouched."""
    path = tmp_path / "state.db"
    if companion:
        SQLiteStore(path).close()
    target = tmp_path / "victim"
    target.write_text("precious")
    Path(f"{path}{companion}").symlink_to(target)
    for create in (True, False):
        with pytest.raises(StoreError, match="symbolic link"):
            SQLiteStore(path, create=create)
    assert target.read_text() == "precious"


def test_a_symlink_swapped_in_after_opening_is_refused(tmp_path: Path) -> None:
    """Replacing the open store's file by a symlink to a copy of it is refused on the next read."""
    path = tmp_path / "state.db"
    store = _store_with_history(path, 1)
    copy = tmp_path / "copy.db"
    kit.backup(path, copy)
    path.unlink()
    path.symlink_to(copy)
    with pytest.raises(StoreError, match="symbolic link"):
        store.revision()
    store.close()


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_store_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """An existing store file writable by group or others is refused with the fix; its mode is kept."""
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    os.chmod(path, mode)
    with pytest.raises(StoreError, match=rf"writable by group or others \(mode {mode:04o}\).*chmod 600"):
        SQLiteStore(path, create=False)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_store_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    """An existing store file (and companions) readable by others is tightened to 0600 when opened."""
    path = tmp_path / "state.db"
    keeper = SQLiteStore(path)
    keeper.commit(0, kit.state("v1"))
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        os.chmod(tmp_path / name, 0o644)
    SQLiteStore(path, create=False).close()
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    keeper.close()


def test_a_non_regular_file_is_refused(tmp_path: Path) -> None:
    """A directory (or FIFO) at the store path is refused, never created over."""
    path = tmp_path / "state.db"
    path.mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        SQLiteStore(path)
    shutil.rmtree(path)


def test_text_sqlite_cannot_store_is_a_store_error_and_writes_nothing(tmp_path: Path) -> None:
    """An actor with a lone surrogate (not storable as UTF-8) is a StoreError, not UnicodeEncodeError; nothing written."""
    store = SQLiteStore(tmp_path / "state.db")
    with pytest.raises(StoreError, match="not valid Unicode"):
        store.commit(0, kit.state("v1"), audit=[kit.entry(actor="\ud800")])
    assert store.revision() == 0
    assert store.audit_log() == []
    assert store.verify_audit().ok
    store.close()


def test_state_without_its_deployments_row_is_corrupt(tmp_path: Path) -> None:
    """A deployment's state with its `deployments` row deleted is a StoreError, never an empty store."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.commit(0, kit.state("v1"), audit=[kit.entry()])
    store.close()
    _raw(path, "DELETE FROM deployments")
    fresh = SQLiteStore(path, create=False, deployment="mini")
    with pytest.raises(StoreError, match=r"deployments row of 'mini' .* is missing"):
        fresh.load()
    fresh.close()
