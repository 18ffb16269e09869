"""A follower compiles a digest once (issue 14, pickup): a new version of an already compiled bundle is restamped."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rule_engine import DeploymentManager, RuleEngine
from rule_engine.deployment import publisher as publisher_module
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_deployment import GATEWAY_V1, GATEWAY_V2

EVENT = {"agent": "gateway", "flow": "login", "user_id": "user-1", "country": "FR"}


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The version ids the publisher compiles a table for (from a bundle), in order."""
    seen: list[str | None] = []
    original = publisher_module.RuleTable.from_bundle

    def counted(bundle: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("version_id"))
        return original(bundle, **kwargs)

    monkeypatch.setattr(publisher_module.RuleTable, "from_bundle", counted)
    return seen


def _pair(tmp_path: Path) -> tuple[DeploymentManager, DeploymentManager, Path]:
    path = tmp_path / "state.db"
    writer = DeploymentManager.open(SQLiteStore(path), follow=False)
    writer.activate_deployment(writer.prepare_deployment(GATEWAY_V1))
    follower = DeploymentManager.open(SQLiteStore(path, create=False), follow=False)
    return writer, follower, path


def test_a_redeployed_bundle_is_restamped_not_compiled(tmp_path: Path, compiles: list[str | None]) -> None:
    """The same bundle deployed again as a new version: the follower serves it without compiling, tagged right."""
    writer, follower, _ = _pair(tmp_path)
    try:
        first = follower.get_active_version_id()
        compiles.clear()
        again = writer.prepare_deployment(GATEWAY_V1)
        writer.activate_deployment(again)
        assert follower.refresh() is True
        assert follower.get_active_version_id() == again != first
        assert again not in compiles
        decision = RuleEngine(follower).evaluate(EVENT)
        assert decision.version_id == again
        assert follower.bundle_of(again).digest == follower.bundle_of(first).digest
        other = writer.prepare_deployment(GATEWAY_V2)  # a new digest is compiled as before
        writer.activate_deployment(other)
        assert follower.refresh() is True
        assert other in compiles
    finally:
        writer.close()
        follower.close()


def test_a_tampered_row_of_a_known_digest_is_still_refused(tmp_path: Path, compiles: list[str | None]) -> None:
    """The reuse reads and hashes the version's stored bundle: a changed row is refused (stale), never served."""
    writer, follower, path = _pair(tmp_path)
    try:
        before = follower.get_active_version_id()
        again = writer.prepare_deployment(GATEWAY_V1)
        conn = sqlite3.connect(path, isolation_level=None)
        (text,) = conn.execute("SELECT json FROM bundles WHERE version_id = ?", (again,)).fetchone()
        conn.execute("UPDATE bundles SET json = ? WHERE version_id = ?", (text.replace('"deny"', '"allow"', 1), again))
        conn.close()
        writer.activate_deployment(again)
        assert follower.refresh() is False
        assert follower.stale is not None
        assert again in follower.stale
        assert follower.get_active_version_id() == before
    finally:
        writer.close()
        follower.close()
