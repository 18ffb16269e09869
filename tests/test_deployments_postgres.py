"""Several deployments on PostgreSQL: schema 3 migrated in place, followers notified per deployment, two policies."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from _support_postgres import PgServer

from rule_engine import Canary, DeploymentManager
from rule_engine.errors import AmbiguousDeploymentError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.integrity import chain_entries
from tests import _support_stores as kit
from tests._support_deployment import BUNDLES, GATEWAY_V1, GATEWAY_V2


@pytest.fixture(autouse=True)
def _driver(pg_server: PgServer) -> None:
    """Import the backend only once the fixture has applied the skip / CI=true fail rule."""


def _connect(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=10)


def _schema_3_store(conninfo: str) -> tuple[str, list[int]]:
    """A database as rule_engine wrote it at schema 3 (migrations 1-3 are never edited): state, bundle, audit."""
    from rule_engine.stores._pg_schema import MIGRATIONS, MIGRATIONS_TABLE

    chained, head = chain_entries([kit.entry("v1"), kit.entry("v1", "carol")], 0, None, 1)
    with _connect(conninfo) as conn:
        conn.execute(MIGRATIONS_TABLE)
        for version, description, sql in MIGRATIONS[:3]:
            assert isinstance(sql, str)
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", (version, description))
        conn.execute("UPDATE meta SET revision = 1, audit_head = %s", (head,))
        conn.execute("INSERT INTO state (id, doc) VALUES (1, %s::jsonb)", (json.dumps(kit.state("v1").to_dict()),))
        conn.execute("INSERT INTO bundles (version_id, digest, doc) VALUES ('v1', 'digest-v1', '{}')")
        for entry, digest in chained:
            conn.execute(
                "INSERT INTO audit (seq, at, action, version_id, from_state, to_state, actor, reason, strategy,"
                " revision, hash) OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s)",
                (entry.seq, entry.at, entry.action, entry.version_id, entry.from_state, entry.to_state, entry.actor,
                 entry.reason, entry.strategy, digest),
            )  # fmt: skip
        conn.execute(
            "INSERT INTO health_lifetime (version_id, evaluations, errors, timeouts, latency_sum_us, histogram,"
            " decisions, rules) VALUES ('v1', 7, 1, 0, 10.0, '{}'::bigint[], '{}'::jsonb, '{}'::jsonb)"
        )
        conn.execute("INSERT INTO instances VALUES ('i1', 5.0, '{}'::jsonb)")
    return head, [e.seq or 0 for e, _ in chained]


def test_a_schema_3_database_migrates_in_place_into_one_deployment(pg_database: str) -> None:
    """Its state, bundle, audit chain (same head), health and fleet rows become deployment 'mini'."""
    from rule_engine.stores.postgres import PostgresStore

    head, seqs = _schema_3_store(pg_database)
    store = PostgresStore(pg_database, create=False)
    assert store.migrate() == (3, 4)
    assert store.deployment_names() == ["mini"]
    assert store.load() == replace(kit.state("v1"), revision=1)
    assert store.deployment == "mini"
    assert store.bundle_json("v1") == "{}"
    assert [e.seq for e in store.audit_log()] == seqs
    check = store.verify_audit()
    assert (check.ok, check.checked, check.head) == (True, 2, head)
    assert store.health(["v1"])["v1"] == HealthCounts(7, 1, 0, 10.0)
    with _connect(pg_database) as conn:
        assert conn.execute("SELECT deployment FROM instances").fetchall() == [("mini",)]
    store.commit(1, kit.state("v1"), audit=[kit.entry("v1", "dave")])
    assert store.verify_audit().checked == 3
    other = store.scoped("other")
    other.commit(0, kit.state("w1"), bundles={"w1": "[]"}, audit=[kit.entry("w1")])
    assert [e.seq for e in other.audit_log()] == [seqs[-1] + 2]  # one sequence for the store
    assert store.bundle_json("w1") is None
    other.close()
    store.close()


def test_a_follower_of_one_deployment_ignores_another_ones_commits(pg_database: str) -> None:
    """A commit to 'two' wakes the listener of 'one' at most to re-read its revision: it reports no change."""
    from rule_engine.stores.postgres import PostgresStore

    root = PostgresStore(pg_database)
    one, two = root.scoped("one"), root.scoped("two")
    one.commit(0, kit.state("v1"))
    with one.listen() as listener:
        assert listener.wait_for_change(timeout=1.0) == 1  # the connect read
        two.commit(0, kit.state("v1"))
        two.commit(1, kit.state("v1"))
        assert listener.wait_for_change(timeout=0.5) is None
        one.commit(1, kit.state("v1"))
        assert listener.wait_for_change(timeout=5.0) == 2
        assert listener.last_via == "notify"
    for handle in (one, two, root):
        handle.close()


def test_two_policies_share_a_database_and_opening_without_a_name_lists_them(pg_database: str) -> None:
    """gateway-access (a canary) and fraud-screen (blue-green) side by side; None is ambiguous then."""
    from rule_engine.stores.postgres import PostgresStore

    root = PostgresStore(pg_database)
    gateway = DeploymentManager.open(root, deployment="gateway-access", follow=False)
    fraud = DeploymentManager.open(root, deployment="fraud-screen", follow=False)
    g1 = gateway.prepare_deployment(GATEWAY_V1)
    gateway.activate_deployment(g1)
    f1 = fraud.prepare_deployment(BUNDLES / "fraud-screen.json")
    fraud.activate_deployment(f1)
    g2 = gateway.prepare_deployment(GATEWAY_V2, Canary((10, 100), 60))
    gateway.activate_deployment(g2)
    assert fraud.refresh() is False
    assert gateway.rollback() == g1
    assert fraud.get_active_version_id() == f1
    assert [d.name for d in gateway.store.deployments()] == ["fraud-screen", "gateway-access"]
    gateway.close()
    fraud.close()
    with pytest.raises(AmbiguousDeploymentError, match="'fraud-screen', 'gateway-access'"):
        DeploymentManager.open(root, follow=False)


def test_another_deployments_late_notification_does_not_turn_a_push_into_a_poll(pg_database: str) -> None:
    """A wait that first receives only another deployment's notification keeps waiting for its own.

    The full suite once saw `last_via == "poll"` here: a late notification of 'two' woke the wait
    meant for 'one', which then read the revision instead of taking its own notification.
    """
    from types import SimpleNamespace

    from rule_engine.stores.postgres import PostgresStore

    root = PostgresStore(pg_database)
    one, two = root.scoped("one"), root.scoped("two")
    one.commit(0, kit.state("v1"))
    with one.listen() as listener:
        assert listener.wait_for_change(timeout=1.0) == 1
        conn = listener._conn
        assert conn is not None
        real = conn.notifies
        late = [[SimpleNamespace(payload=json.dumps({"deployment": "two", "revision": 7}))], []]

        def notifies(**kwargs: Any) -> Any:
            return late.pop(0) if late else real(**kwargs)

        conn.notifies = notifies  # type: ignore[method-assign]
        one.commit(1, kit.state("v1"))
        assert listener.wait_for_change(timeout=5.0) == 2
        assert listener.last_via == "notify"
    for handle in (one, two, root):
        handle.close()
