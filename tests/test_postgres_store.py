"""What PostgresStore adds to the store contract: URLs, secrecy, NOTIFY, schema, audit, privileges, upserts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support_postgres import run_threads
from test_store_contract import _entry, _record, _state

from rule_engine.control.states import DeploymentState
from rule_engine.errors import ConflictError, StoreError, StoreURLError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import open_store

PASSWORD = "Tr0ub4dor-and-3"
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def store(pg_database: str) -> Iterator[object]:
    """A PostgresStore on a database of its own."""
    from rule_engine.stores.postgres import PostgresStore

    backend = PostgresStore(pg_database, timeout=5)
    yield backend
    backend.close()


def _url(conninfo: str, **extra: str) -> str:
    """The URL form of a fixture conninfo (``postgresql:///db?host=/socket&user=...``)."""
    from urllib.parse import urlencode

    from psycopg.conninfo import conninfo_to_dict

    parts = {k: str(v) for k, v in conninfo_to_dict(conninfo).items()}
    dbname = parts.pop("dbname")
    return f"postgresql:///{dbname}?{urlencode({**parts, **extra})}"


def _admin(conninfo: str) -> object:
    import psycopg as pg

    return pg.connect(conninfo, autocommit=True, connect_timeout=10)


def test_open_store_takes_postgresql_and_postgres_urls_with_our_options(pg_database: str) -> None:
    """``postgresql://`` and ``postgres://`` open a PostgresStore; ``timeout`` and ``pool_size`` are ours."""
    from rule_engine.stores.postgres import PostgresStore

    for url in (_url(pg_database, timeout="2.5", pool_size="2"), _url(pg_database).replace("postgresql", "postgres")):
        store = open_store(url, create=True)
        assert isinstance(store, PostgresStore)
        assert store.revision() == 0
        store.close()
    assert PostgresStore.from_url(_url(pg_database, timeout="2.5")).timeout == 2.5
    with pytest.raises(StoreURLError, match=r"pool_size must be 1\.\.64"):
        PostgresStore(_url(pg_database, pool_size="0"))
    with pytest.raises(StoreURLError, match="timeout must be a number"):
        PostgresStore(_url(pg_database, timeout="soon"))
    with pytest.raises(StoreURLError, match="invalid PostgreSQL address"):
        PostgresStore(_url(pg_database, frobnicate="1"))


def test_libpq_conninfo_and_pg_environment_are_honoured(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conninfo string works as is, and what a URL leaves out comes from the PG* environment."""
    from psycopg.conninfo import conninfo_to_dict

    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(pg_database)
    store.commit(0, _state())
    store.close()
    parts = conninfo_to_dict(pg_database)
    monkeypatch.setenv("PGHOST", str(parts["host"]))
    monkeypatch.setenv("PGUSER", str(parts["user"]))
    monkeypatch.setenv("PGDATABASE", str(parts["dbname"]))
    from_env = open_store("postgresql://")
    assert from_env.revision() == 1
    from_env.close()


def test_the_password_never_shows(
    pg_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The password is in no url, repr, str, error message or log line, in URL or conninfo form."""
    from rule_engine.stores.postgres import PostgresStore

    caplog.set_level(logging.DEBUG)
    good = PostgresStore(_url(pg_database).replace("postgresql:///", f"postgresql://postgres:{PASSWORD}@/"))
    good.commit(0, _state())  # trust authentication: the password is sent and ignored
    shown = [good.url, repr(good), str(good)]
    good.close()
    nowhere = str(tmp_path / "no-such-socket-dir")
    addresses = [
        f"postgresql://alice:{PASSWORD}@/db?host={nowhere}&timeout=0.2",
        f"host={nowhere} user=alice password={PASSWORD} dbname=db",
        f"host={nowhere} user=alice password='{PASSWORD}' dbname=db",
    ]
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    addresses.append(f"postgresql:///db?host={nowhere}")
    for address in addresses:
        store = PostgresStore(address, timeout=0.2)
        shown += [store.url, repr(store), str(store)]
        for call in (store.revision, store.load, lambda s=store: s.commit(0, _state())):
            with pytest.raises(StoreError) as caught:
                call()
            shown += [str(caught.value), repr(caught.value)]
        with store.listen() as listener, pytest.raises(StoreError) as caught:
            listener.wait_for_change(0.1)
        shown += [str(caught.value), repr(listener)]
        store.close()
    with pytest.raises(StoreURLError) as bad:
        PostgresStore(f"postgresql://alice:{PASSWORD}@/db?pool_size=999")
    shown.append(str(bad.value))
    shown.append(caplog.text)
    assert all(PASSWORD not in text for text in shown), [t for t in shown if PASSWORD in t]
    assert "***" in shown[0]
    assert any("cannot reach PostgreSQL" in t or "no connection to PostgreSQL" in t for t in shown)


def test_commit_notifies_the_revision_and_ids_only_and_only_when_it_commits(store: object, pg_database: str) -> None:
    """A commit sends one NOTIFY with ``{"deployment", "revision", "ids"}``; a conflicting commit sends none."""
    from rule_engine.stores.postgres import CHANNEL, PostgresStore

    assert isinstance(store, PostgresStore)
    with _admin(pg_database) as conn:  # type: ignore[attr-defined]
        conn.execute(f"LISTEN {CHANNEL}")
        store.commit(0, _state(_record("v1", 1)), bundles={"v1": "{}"}, audit=[_entry("v1")])
        with pytest.raises(ConflictError):
            store.commit(0, _state(_record("v2", 1)), bundles={"v2": "{}"})
        store.commit(1, _state(), evicted=["v1"], audit=[_entry("v1", "evict")])
        payloads = [json.loads(n.payload) for n in conn.notifies(timeout=2.0, stop_after=2)]
        assert list(conn.notifies(timeout=0.2)) == []
    assert payloads == [
        {"deployment": "b", "revision": 1, "ids": ["v1"]},
        {"deployment": "b", "revision": 2, "ids": ["v1"]},
    ]


def test_the_audit_table_refuses_update_delete_and_truncate_by_trigger(store: object, pg_database: str) -> None:
    """Even the owner cannot UPDATE, DELETE or TRUNCATE audit rows: the trigger refuses each."""
    import psycopg as pg

    assert hasattr(store, "commit")
    store.commit(0, _state(), audit=[_entry("v1")])  # type: ignore[attr-defined]
    with _admin(pg_database) as conn:  # type: ignore[attr-defined]
        for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(pg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT actor FROM audit").fetchall() == [("bob",)]


def test_an_application_role_with_the_documented_grants_commits_but_cannot_rewrite_audit(
    pg_server: object, pg_database: str
) -> None:
    """With the docs' grants (INSERT, SELECT on audit) the app role works; UPDATE/DELETE are StoreErrors."""
    from psycopg.conninfo import make_conninfo

    from rule_engine.stores._pg_schema import APP_GRANTS
    from rule_engine.stores.postgres import PostgresStore

    assert APP_GRANTS.format(role="rule_engine_app").strip() in (DOCS / "fleet.md").read_text()
    owner = PostgresStore(pg_database)
    assert owner.migrate() == (0, 4)
    owner.close()
    role = f"re_app_{abs(hash(pg_database)) % 10**8}"
    with _admin(pg_database) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(APP_GRANTS.format(role=role).encode())
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")  # privileges alone must hold
    app = PostgresStore(make_conninfo(pg_database, user=role))
    try:
        state = app.commit(0, _state(_record("v1", 1, DeploymentState.ACTIVE), active="v1"), bundles={"v1": "{}"})
        app.commit(1, state, audit=[_entry("v1")], evicted=["v1"])
        app.add_health("v1", 0.0, HealthCounts(3, 1))
        app.prune_health(before=-1.0)
        assert app.revision() == 2
        assert [e.actor for e in app.audit_log()] == ["bob"]
        for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(StoreError, match="permission denied"):
                app._run("tampering with the audit log", lambda c, s=statement: c.execute(s))
        assert [e.actor for e in app.audit_log()] == ["bob"]
    finally:
        app.close()
        with _admin(pg_database) as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_role_that_may_not_migrate_is_told_to_run_store_migrate(pg_database: str) -> None:
    """An application role opening an unmigrated database gets a StoreError naming `rule-engine store migrate`."""
    from psycopg.conninfo import make_conninfo

    from rule_engine.stores.postgres import PostgresStore

    role = f"re_ro_{abs(hash(pg_database)) % 10**8}"
    with _admin(pg_database) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    app = PostgresStore(make_conninfo(pg_database, user=role))
    try:
        with pytest.raises(StoreError, match="rule-engine store migrate"):
            app.revision()
    finally:
        app.close()
        with _admin(pg_database) as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP ROLE {role}")


def test_migrate_is_recorded_idempotent_and_refuses_a_newer_schema(pg_database: str) -> None:
    """``migrate`` applies every migration once and records it; a newer schema is refused naming both versions."""
    from rule_engine.stores.postgres import SCHEMA_VERSION, PostgresStore

    store = PostgresStore(pg_database)
    assert store.schema_version() == 0
    assert store.migrate() == (0, SCHEMA_VERSION)
    assert store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
    store.close()
    with _admin(pg_database) as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [
            (1,),
            (2,),
            (3,),
            (4,),
        ]
        conn.execute("INSERT INTO schema_migrations (version, description) VALUES (7, 'from the future')")
    newer = PostgresStore(pg_database)
    for call in (newer.revision, newer.migrate):
        with pytest.raises(StoreError, match=rf"schema 7, newer than schema {SCHEMA_VERSION}"):
            call()
    newer.close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(pg_database: str) -> None:
    """Eight stores opened at once on an empty database all work; each migration is applied once."""
    from rule_engine.stores.postgres import PostgresStore

    stores = [PostgresStore(pg_database) for _ in range(8)]
    revisions: list[int] = []
    errors = run_threads(lambda i: revisions.append(stores[i].revision()), 8)
    for s in stores:
        s.close()
    assert errors == []
    assert revisions == [0] * 8
    with _admin(pg_database) as conn:  # type: ignore[attr-defined]
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (4,)
        assert conn.execute("SELECT count(DISTINCT store_id) FROM meta").fetchone() == (1,)


def test_health_upserts_merge_histograms_and_maps_in_sql(store: object) -> None:
    """Histograms of different lengths add elementwise; decision and rule maps union their keys and sum."""
    assert hasattr(store, "add_health_many")
    store.add_health_many(  # type: ignore[attr-defined]
        [
            ("v1", 0.0, HealthCounts(1, 0, 0, 1.5, (1, 2, 3), {"allow": 1}, {"r1": 1})),
            ("v1", 0.0, HealthCounts(2, 1, 1, 2.5, (10,), {"deny": 2}, {"r1": 2, "": 1})),
        ]
    )
    store.add_health("v1", 0.0, HealthCounts(1, 0, 0, 0.0, (0, 0, 0, 7), {"allow": 5}))  # type: ignore[attr-defined]
    expected = HealthCounts(4, 1, 1, 4.0, (11, 2, 3, 7), {"allow": 6, "deny": 2}, {"r1": 3, "": 1})
    assert store.health(["v1"], since=0.0) == {"v1": expected}  # type: ignore[attr-defined]
    assert store.health(["v1"]) == {"v1": expected}  # type: ignore[attr-defined]


def test_health_flushed_from_many_threads_adds_up_exactly(pg_database: str) -> None:
    """Eight writers adding 25 deltas each to the same rows: every count lands once (no lost update)."""
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(pg_database, pool_size=8)
    store.revision()
    delta = HealthCounts(3, 1, 0, 2.0, (1, 1), {"allow": 2})

    def writer(_: int) -> None:
        for _ in range(25):
            store.add_health_many([("v1", 0.0, delta), ("v2", 10.0, delta), ("v1", 10.0, delta)])

    errors = run_threads(writer, 8)
    n = 8 * 25
    assert errors == []
    assert store.health(["v1", "v2"]) == {
        "v1": HealthCounts(6 * n, 2 * n, 0, 4.0 * n, (2 * n, 2 * n), {"allow": 4 * n}),
        "v2": HealthCounts(3 * n, n, 0, 2.0 * n, (n, n), {"allow": 2 * n}),
    }
    store.close()


def test_the_listener_reports_commits_and_polls_when_nothing_comes(pg_database: str) -> None:
    """``wait_for_change`` returns the revision on connect, each new revision, and None when idle."""
    from rule_engine.stores.postgres import PostgresStore

    writer = PostgresStore(pg_database)
    writer.commit(0, _state())
    with writer.listen() as listener:
        assert listener.last_round_trip_age() is None
        assert listener.wait_for_change(1.0) == 1  # first connect: the revision is read
        assert listener.wait_for_change(0.05) is None  # nothing happened: a poll, no change
        writer.commit(1, _state())
        writer.commit(2, _state())
        seen = []
        for _ in range(2):  # two notifications may arrive in one wake-up: then the second is never needed
            seen.append(listener.wait_for_change(5.0))
            if seen[-1] == 3:
                break
        assert seen in ([2, 3], [3])
        assert listener.revision == 3
        age = listener.last_round_trip_age()
        assert age is not None
        assert age >= 0.0
    writer.close()


def test_a_closed_store_raises_store_error(pg_database: str) -> None:
    """Calls on a closed store raise StoreError saying it is closed."""
    from rule_engine.stores.postgres import PostgresStore

    store = PostgresStore(pg_database)
    store.revision()
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.revision()


def _cli(url: str, *args: str) -> object:
    from click.testing import CliRunner

    from rule_engine.cli import cli

    return CliRunner().invoke(cli, ["--store", url, *args])


def test_the_cli_deploys_and_reports_on_a_postgresql_store(pg_database: str) -> None:
    """deploy, a canary, status and history work on a ``postgresql://`` store as on SQLite."""
    bundles = Path(__file__).resolve().parent.parent / "bundles"
    url = _url(pg_database)
    first = _cli(url, "deploy", str(bundles / "gateway-v1.json"), "--json", "--by", "alice")
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    v1 = json.loads(first.output)["version_id"]  # type: ignore[attr-defined]
    second = _cli(url, "deploy", str(bundles / "gateway-v2.json"), "--strategy", "canary", "--json")
    assert second.exit_code == 0, second.output  # type: ignore[attr-defined]
    status = json.loads(_cli(url, "status", "--json").output)  # type: ignore[attr-defined]
    assert status["active_version"] == v1
    assert status["rollout"]["version_id"] == json.loads(second.output)["version_id"]  # type: ignore[attr-defined]
    history = json.loads(_cli(url, "history", "--json").output)  # type: ignore[attr-defined]
    assert history["versions"][0]["deployed_by"] == "alice"


def test_status_output_never_shows_the_password(pg_database: str) -> None:
    """deploy, status (text and JSON), controller and a failing status show the store with the password masked."""
    bundles = Path(__file__).resolve().parent.parent / "bundles"
    url = _url(pg_database).replace("postgresql:///", f"postgresql://postgres:{PASSWORD}@/")
    missing = _cli(url, "status")  # nothing deployed yet: an error line naming the store
    assert missing.exit_code == 1  # type: ignore[attr-defined]
    assert "postgres:***@" in missing.output  # type: ignore[attr-defined]
    assert PASSWORD not in missing.output  # type: ignore[attr-defined]
    for args in (
        ("deploy", str(bundles / "gateway-v1.json")),
        ("deploy", str(bundles / "gateway-v2.json"), "--json"),
        ("status",),
        ("status", "--json"),
        ("controller", "--once"),
    ):
        result = _cli(url, *args)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert PASSWORD not in result.output  # type: ignore[attr-defined]
    shown = json.loads(_cli(url, "status", "--json").output)["store"]  # type: ignore[attr-defined]
    assert shown.startswith("postgresql://postgres:***@/")
