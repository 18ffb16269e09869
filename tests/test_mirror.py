"""The mirror: a per-host read-only SQLite copy of an upstream store that local evaluators follow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rule_engine import DeploymentManager, RuleEngine
from rule_engine.cli import cli
from rule_engine.deployment.mirror import Mirror
from rule_engine.errors import StoreError
from rule_engine.stores.base import StateStore, open_store
from rule_engine.stores.sqlite import SQLiteStore
from rule_engine.testing import ManualClock
from tests._support_health import bundle, drive


@pytest.fixture
def upstream_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'upstream.db'}"


@pytest.fixture
def local_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mirror.db'}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def upstream(upstream_url: str, clock: ManualClock) -> Iterator[DeploymentManager]:
    manager = DeploymentManager.open(upstream_url, follow=False, clock=clock)
    manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
    yield manager
    manager.close()


def mirror_of(store: StateStore, local_url: str) -> Mirror:
    copy = Mirror(store, SQLiteStore.from_url(local_url, create=True))
    copy.open()
    return copy


def check_the_mirror_story(
    upstream: DeploymentManager, upstream_store: StateStore, local_url: str, clock: ManualClock
) -> None:
    """What both the SQLite and the PostgreSQL upstream must do."""
    copy = mirror_of(upstream_store, local_url)
    assert copy.sync_once().copied
    local = DeploymentManager.open(local_url, follow=False, clock=clock)
    try:
        assert local.get_active_version_id() == upstream.get_active_version_id()
        assert local.state.revision == upstream.state.revision
        identity = local.store.identity()
        # an upstream deploy reaches the local follower through the mirror
        candidate = upstream.prepare_deployment(bundle("2.0.0"))
        upstream.activate_deployment(candidate)
        copy.sync_once()
        assert local.refresh()
        assert local.get_active_version_id() == candidate
        assert [e.action for e in local.audit_log(candidate)] == [e.action for e in upstream.audit_log(candidate)]
        assert local.store.verify_audit().ok
        # local writes are refused, naming the upstream
        with pytest.raises(StoreError, match=r"read-only mirror of .*rule-engine --store"):
            local.rollback()
        # health flushed by the local process is forwarded upstream
        drive(RuleEngine(local), 50)
        local.close()
        report = copy.sync_once()
        assert report.health_forwarded >= 1
        assert upstream_store.health([candidate])[candidate].evaluations == 50
        assert copy.sync_once().health_forwarded == 0  # forwarded once
        # a restarted mirror keeps the local identity
        copy.local.close()
        again = mirror_of(upstream_store, local_url)
        again.sync_once()
        local = DeploymentManager.open(local_url, follow=False, clock=clock)
        assert local.store.identity() == identity
        # fleet registration carries through, marked via the mirror; a local instance that left is forgotten
        local.fleet.beat()
        assert again.sync_once().instances_forwarded == 1
        (row,) = [i for i in upstream_store.instances() if i.instance_id == local.fleet.instance_id]
        assert row.via == again.local.url
        assert row.serving == [candidate]
        local.close()
        again.sync_once()
        assert [i for i in upstream_store.instances() if i.instance_id == local.fleet.instance_id] == []
        again.local.close()
    finally:
        local.close()


def test_sqlite_to_sqlite(upstream: DeploymentManager, local_url: str, clock: ManualClock) -> None:
    """An SQLite upstream mirrored into another SQLite file: state, bundles, audit, health, fleet."""
    check_the_mirror_story(upstream, upstream.store, local_url, clock)


def test_postgres_to_sqlite(pg_database: str, local_url: str, clock: ManualClock) -> None:
    """A PostgreSQL upstream mirrored into a local SQLite file behaves the same."""
    from rule_engine.stores.postgres import PostgresStore

    manager = DeploymentManager.open(PostgresStore(pg_database), follow=False, clock=clock)
    try:
        manager.activate_deployment(manager.prepare_deployment(bundle("1.0.0")))
        check_the_mirror_story(manager, manager.store, local_url, clock)
    finally:
        manager.close()


def test_a_mirror_refuses_another_upstream_and_an_ordinary_store(
    upstream: DeploymentManager, local_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """A mirror file copies one store for life; an ordinary store holding state cannot become a mirror."""
    mirror_of(upstream.store, local_url).sync_once()
    other = DeploymentManager.open(f"sqlite:///{tmp_path / 'other.db'}", follow=False, clock=clock)
    other.activate_deployment(other.prepare_deployment(bundle("1.0.0")))
    with pytest.raises(StoreError, match="remove the file to mirror another store"):
        mirror_of(other.store, local_url)
    with pytest.raises(StoreError, match="is an ordinary store holding state"):
        mirror_of(other.store, upstream.store.url)
    other.close()


def test_the_mirror_command_syncs_once_and_deploy_on_the_mirror_is_one_clear_error(
    upstream: DeploymentManager, upstream_url: str, local_url: str
) -> None:
    """`rule-engine mirror --once` copies the state; `deploy` on the mirror fails in one line naming the upstream."""
    runner = CliRunner()
    result = runner.invoke(cli, ["mirror", "--from", upstream_url, "--to", local_url, "--once", "--json"])
    assert result.exit_code == 0, result.output
    assert f'"revision": {upstream.state.revision}' in result.output
    shown = runner.invoke(cli, ["--store", local_url, "status"])
    assert f"active:  {upstream.get_active_version_id()}" in shown.output
    bundle_file = Path(local_url[len("sqlite:///") :]).with_name("b.json")
    bundle_file.write_text(json.dumps(bundle("3.0.0")))
    refused = runner.invoke(cli, ["--store", local_url, "deploy", str(bundle_file)])
    assert refused.exit_code == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: ")
    assert "read-only mirror of" in line
    assert "upstream.db" in line
    assert open_store(local_url).revision() == upstream.state.revision  # nothing written
