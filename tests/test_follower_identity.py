"""Manager-level store identity and digest checks (D10, D11), through the public DeploymentManager API.

These need wiring in rule_engine/deployment/ (see the store helper's report): each group is skipped
until the manager uses the helper it tests (``load_checked_bundle``, ``check_continuity``), so
they switch on by themselves when the wiring lands. SQLite stores already refuse a replaced or
rolled-back file on their own (tests/test_store_faults.py); these cover the manager's checks.
"""

from __future__ import annotations

import importlib
import pkgutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

import rule_engine.deployment
from rule_engine import DeploymentManager, RuleEngine
from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import StoreError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import AuditCheck
from rule_engine.stores.memory import MemoryStore
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2


def _wired(name: str) -> bool:
    """Whether a module of rule_engine.deployment uses the store helper ``name``."""
    package = rule_engine.deployment
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        if hasattr(importlib.import_module(info.name), name):
            return True
    return False


digests_wired = pytest.mark.skipif(
    not _wired("load_checked_bundle"), reason="the manager does not check bundles with load_checked_bundle yet"
)
continuity_wired = pytest.mark.skipif(
    not _wired("check_continuity"), reason="the manager does not check store continuity yet"
)

EVENT = {"agent": "gateway", "flow": "login", "user_id": "user-1", "country": "FR"}


def _served(manager: DeploymentManager) -> tuple[str | None, str]:
    return manager.get_active_version_id(), RuleEngine(manager).evaluate(EVENT).decision


def _tamper_bundle(path: Path, version_id: str) -> None:
    """Change one value in a stored bundle row, keeping it a valid bundle (the D11 attack)."""
    conn = sqlite3.connect(path, isolation_level=None)
    (text,) = conn.execute("SELECT json FROM bundles WHERE version_id = ?", (version_id,)).fetchone()
    tampered = text.replace('"deny"', '"allow"', 1)
    assert tampered != text
    conn.execute("UPDATE bundles SET json = ? WHERE version_id = ?", (tampered, version_id))
    conn.close()


# --- D11: every bundle loaded from a store is checked against its recorded digest ----------------------


@digests_wired
def test_a_follower_refuses_a_tampered_bundle_and_keeps_serving(tmp_path: Path) -> None:
    """A follower loading a tampered bundle goes stale naming the version, and keeps serving v1."""
    path = tmp_path / "state.db"
    writer = DeploymentManager.open(SQLiteStore(path), follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    follower = DeploymentManager.open(SQLiteStore(path, create=False), follow=False)
    before = _served(follower)
    v2 = writer.prepare_deployment(GATEWAY_V2)
    _tamper_bundle(path, v2)
    writer.activate_deployment(v2)
    assert follower.refresh() is False
    assert follower.stale is not None
    assert v2 in follower.stale
    assert "digest" in follower.stale
    assert _served(follower) == before
    writer.close()
    follower.close()


@digests_wired
def test_opening_on_a_tampered_active_bundle_is_a_store_error(tmp_path: Path) -> None:
    """A manager opened on a store whose active bundle was changed raises StoreError naming the version."""
    path = tmp_path / "state.db"
    writer = DeploymentManager.open(SQLiteStore(path), follow=False)
    v1 = writer.prepare_deployment(GATEWAY_V1)
    writer.activate_deployment(v1)
    writer.close()
    _tamper_bundle(path, v1)
    with pytest.raises(StoreError, match="does not match its recorded digest"):
        DeploymentManager.open(SQLiteStore(path, create=False), follow=False)


@digests_wired
def test_bundle_of_a_tampered_version_is_a_store_error(tmp_path: Path) -> None:
    """bundle_of a stored (not served) version whose row was changed raises StoreError, never the altered bundle."""
    path = tmp_path / "state.db"
    writer = DeploymentManager.open(SQLiteStore(path), follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    v2 = writer.prepare_deployment(GATEWAY_V2)
    writer.close()
    _tamper_bundle(path, v2)
    reader = DeploymentManager.open(SQLiteStore(path, create=False), follow=False)
    with pytest.raises(StoreError, match=v2.replace("+", r"\+")):
        reader.bundle_of(v2)
    reader.close()


# --- D10: the manager refuses a store whose identity changed or whose revision went back ---------------


class SwitchableStore(StateStore):
    """A store that answers from ``current``, which a test switches (as a backend that reconnects might)."""

    def __init__(self, current: StateStore) -> None:
        self.current = current

    def load(self) -> ControlState:
        return self.current.load()

    def revision(self) -> int:
        return self.current.revision()

    def identity(self) -> str:
        return self.current.identity()

    def verify_audit(self) -> AuditCheck:
        return self.current.verify_audit()

    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        return self.current.commit(expected_revision, state, bundles=bundles, audit=audit, evicted=evicted)

    def bundle_json(self, version_id: str) -> str | None:
        return self.current.bundle_json(version_id)

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        return self.current.audit_log(version_id, limit)

    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        self.current.add_health(version_id, bucket_start, delta)

    def health(self, version_ids: Sequence[str], since: float | None = None) -> dict[str, HealthCounts]:
        return self.current.health(version_ids, since)


@continuity_wired
def test_a_follower_never_adopts_a_store_with_another_identity() -> None:
    """When the store answering is another store (new identity), the follower goes stale and keeps serving."""
    original = MemoryStore()
    writer = DeploymentManager.open(original, follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    switchable = SwitchableStore(original)
    follower = DeploymentManager.open(switchable, follow=False)
    before = _served(follower)
    other = MemoryStore()
    newcomer = DeploymentManager.open(other, follow=False)
    newcomer.activate_deployment(newcomer.prepare_deployment(GATEWAY_V2))
    newcomer.activate_deployment(newcomer.prepare_deployment(GATEWAY_V1))  # a higher revision than the original
    switchable.current = other
    for _ in range(2):
        assert follower.refresh() is False
        assert "replaced or recreated" in str(follower.stale)
        assert _served(follower) == before
    switchable.current = original  # the right store is back: the follower recovers
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V2))
    assert follower.refresh() is True
    assert follower.stale is None


@continuity_wired
def test_a_follower_refuses_a_revision_that_went_backwards() -> None:
    """The same store identity at a lower revision (an older backup): stale, still serving the newer state."""
    original = MemoryStore()
    writer = DeploymentManager.open(original, follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    older = MemoryStore()
    older._memory.identity = original.identity()  # a backup of the same store, taken before v2
    restored = DeploymentManager.open(older, follow=False)
    restored.activate_deployment(restored.prepare_deployment(GATEWAY_V1))
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V2))
    switchable = SwitchableStore(original)
    follower = DeploymentManager.open(switchable, follow=False)
    before = _served(follower)
    switchable.current = older
    assert older.revision() < original.revision()
    assert follower.refresh() is False
    assert "went backwards" in str(follower.stale)
    assert _served(follower) == before
