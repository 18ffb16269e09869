"""Store faults: deleted, replaced, restored from an older backup, corrupted rows and pages, audit rewrites.

Every fault ends in a :class:`StoreError` (for a follower: stale with the reason, still serving its
last good state) and never in serving something else. Followers are driven with ``refresh()`` (one
synchronous follow step), so no test waits on a background thread.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rule_engine import DeploymentManager, RuleEngine
from rule_engine.errors import StoreError
from rule_engine.stores.sqlite import SQLiteStore
from tests import _support_stores as kit
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2

EVENT = {"agent": "gateway", "flow": "login", "user_id": "user-1", "country": "FR"}


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[tuple[DeploymentManager, DeploymentManager, Path]]:
    """A writer that activated v1, and a follower (own store object on the same file) serving it."""
    path = tmp_path / "state.db"
    writer = DeploymentManager.open(SQLiteStore(path), follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1, deployed_by="alice"), actor="alice")
    follower = DeploymentManager.open(SQLiteStore(path, create=False), follow=False)
    yield writer, follower, path
    writer.close()
    follower.close()


def _served(manager: DeploymentManager) -> tuple[str | None, str, str | None]:
    decision = RuleEngine(manager).evaluate(EVENT)
    return manager.get_active_version_id(), decision.decision, decision.version_id


def _drop_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _assert_stale_and_serving(follower: DeploymentManager, before: object, reason: str) -> None:
    assert follower.refresh() is False
    assert follower.stale is not None
    assert reason in follower.stale, follower.stale
    assert _served(follower) == before


def test_deleted_store_follower_stays_stale_and_a_reader_creates_nothing(
    deployed: tuple[DeploymentManager, DeploymentManager, Path],
) -> None:
    """Deleted: the follower serves its last state, stale; a read-only manager refuses and creates no file."""
    _, follower, path = deployed
    before = _served(follower)
    _drop_files(path)
    _assert_stale_and_serving(follower, before, "unavailable")
    with pytest.raises(StoreError, match="no store at"):
        DeploymentManager.open(SQLiteStore(path, create=False), follow=False)
    assert not path.exists()
    _assert_stale_and_serving(follower, before, "unavailable")


def test_replaced_store_is_never_adopted(deployed: tuple[DeploymentManager, DeploymentManager, Path]) -> None:
    """Deleted then recreated by a `deploy` of v2: the follower stays stale on v1 and never serves the new store."""
    _, follower, path = deployed
    before = _served(follower)
    _drop_files(path)
    newcomer = DeploymentManager.open(SQLiteStore(path), follow=False)
    newcomer.activate_deployment(newcomer.prepare_deployment(GATEWAY_V2))
    for _ in range(3):
        _assert_stale_and_serving(follower, before, "replaced or recreated")
    newcomer.close()


def test_store_restored_from_an_older_backup_is_refused(
    deployed: tuple[DeploymentManager, DeploymentManager, Path],
) -> None:
    """Restored from a backup older than what the follower serves: stale (revision went backwards), still v2."""
    writer, follower, path = deployed
    backup = path.with_name("backup.db")
    kit.backup(path, backup)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V2))
    assert follower.refresh() is True
    before = _served(follower)
    assert before[0] != writer.get_deployment_history()[0]
    os.chmod(backup, 0o600)
    _drop_files(path)
    os.replace(backup, path)
    _assert_stale_and_serving(follower, before, "went backwards")


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE state SET json = '[]'",
        "UPDATE state SET json = '{}'",
        "UPDATE state SET json = 'null'",
        "UPDATE state SET json = CAST(x'c328' AS TEXT)",  # not UTF-8
        'UPDATE state SET json = replace(json, \'"active":\', \'"active":7,"x":\')',
        "UPDATE deployments SET revision = 'abc'",
        "UPDATE meta SET store_id = NULL",
    ],
)
def test_corrupt_rows_make_followers_stale_and_readers_fail(
    deployed: tuple[DeploymentManager, DeploymentManager, Path], statement: str
) -> None:
    """A corrupt state or meta row (with the revision moved, so followers look): stale on v1; readers raise."""
    _, follower, path = deployed
    before = _served(follower)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER meta_identity_is_fixed")
    conn.execute("UPDATE deployments SET revision = revision + 1")
    conn.execute(statement)
    conn.close()
    _assert_stale_and_serving(follower, before, "StoreError")
    with pytest.raises(StoreError):
        DeploymentManager.open(SQLiteStore(path, create=False), follow=False)


def test_a_valid_change_made_outside_is_followed(deployed: tuple[DeploymentManager, DeploymentManager, Path]) -> None:
    """The control for the test above: a revision moved with a sound state is followed, not stale."""
    _, follower, path = deployed
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE deployments SET revision = revision + 1")
    conn.close()
    assert follower.refresh() is True
    assert follower.stale is None


def test_garbage_in_the_header_is_a_store_error(deployed: tuple[DeploymentManager, DeploymentManager, Path]) -> None:
    """Garbage written over the file header: opening raises StoreError naming the file."""
    writer, _, path = deployed
    writer.close()
    with path.open("r+b") as file:
        file.write(b"\xde\xad\xbe\xef" * 25)
    with pytest.raises(StoreError, match=r"state\.db"):
        DeploymentManager.open(SQLiteStore(path, create=False), follow=False)


def test_garbage_in_pages_never_serves_something_else(tmp_path: Path) -> None:
    """Random garbage written over pages of a checkpointed store: each open raises StoreError or serves v1 exactly."""
    faults, errors, rng = 2000 if os.environ.get("RULE_ENGINE_SOAK") else 200, 0, random.Random(20261201)
    pristine = tmp_path / "pristine.db"
    writer = DeploymentManager.open(SQLiteStore(pristine), follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    expected = _served(writer)
    writer.store.commit(writer.store.revision(), writer.store.load())  # one more revision, same state
    writer.close()  # the last connection closing checkpoints the WAL into the file
    data = pristine.read_bytes()
    for fault in range(faults):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            offset = rng.randrange(100, len(damaged) - 16)  # past the 100-byte header (tested above)
            damaged[offset : offset + 16] = rng.randbytes(16)
        path = tmp_path / f"damaged{fault}.db"
        path.write_bytes(bytes(damaged))
        os.chmod(path, 0o600)
        try:
            reader = DeploymentManager.open(SQLiteStore(path, create=False), follow=False)
        except StoreError:
            errors += 1
            continue
        try:
            assert _served(reader) == expected
        finally:
            reader.close()
    print(f"store faults: {faults} page corruptions injected, {errors} refused with StoreError, rest served v1")


_PRISTINE: dict[str, bytes] = {}


def _history_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a checkpointed store with 4+ audit entries (built once per run)."""
    if "audit" not in _PRISTINE:
        path = tmp_path_factory.mktemp("pristine") / "state.db"
        writer = DeploymentManager.open(SQLiteStore(path), follow=False)
        writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1, deployed_by="alice"), actor="alice")
        writer.activate_deployment(writer.prepare_deployment(GATEWAY_V2), actor="bob")
        assert len(writer.audit_log()) >= 4
        writer.close()
        _PRISTINE["audit"] = path.read_bytes()
    return _PRISTINE["audit"]


@settings(max_examples=30)
@given(
    seq=st.integers(1, 4),
    column=st.sampled_from(["at", "action", "version_id", "to_state", "actor", "reason", "revision"]),
    value=st.one_of(st.integers(-3, 3), st.text(max_size=5), st.floats(allow_nan=False)),
)
def test_any_audit_rewrite_fails_verification_at_that_entry(
    tmp_path_factory: pytest.TempPathFactory, seq: int, column: str, value: object
) -> None:
    """Changing any column of any audit entry (triggers bypassed) fails verify_audit at exactly that entry."""
    path = tmp_path_factory.mktemp("audit") / "state.db"
    path.write_bytes(_history_file(tmp_path_factory))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, isolation_level=None)
    before = conn.execute(f"SELECT {column} FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute(f"UPDATE audit SET {column} = ? WHERE seq = ?", (value, seq))
    after = conn.execute(f"SELECT {column} FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
    conn.close()
    store = SQLiteStore(path, create=False)
    check = store.verify_audit()
    if after == before and type(after) is type(before):
        assert check.ok  # the "rewrite" wrote the same value
    else:
        assert not check.ok
        assert check.first_bad_seq == seq
    store.close()
