"""PostgresStore's identity, continuity, audit chain, schema 2 migration and checked reads, on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from _support_postgres import PgServer, conninfo_dbname

from rule_engine.errors import StoreError
from rule_engine.serving.counts import HealthCounts
from rule_engine.stores.base import open_store
from tests import _support_stores as kit

if TYPE_CHECKING:
    from rule_engine.stores.postgres import PostgresStore

SCHEMA_VERSION = 4


@pytest.fixture(autouse=True)
def _driver(pg_server: PgServer) -> None:
    """Import the backend only once the fixture has applied the skip / CI=true fail rule."""
    from rule_engine.stores import postgres

    globals()["PostgresStore"] = postgres.PostgresStore
    assert postgres.SCHEMA_VERSION == SCHEMA_VERSION


def _connect(conninfo: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=10)


@pytest.fixture
def store(pg_database: str) -> Iterator[PostgresStore]:
    backend = PostgresStore(pg_database, timeout=5)
    yield backend
    backend.close()


def _tables(conninfo: str) -> int:
    with _connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    return int(row[0])


def _replace_database(server: PgServer, conninfo: str, template: str | None = None) -> None:
    """Drop the database ``conninfo`` names and create it again (empty, or as a copy of ``template``)."""
    name = conninfo_dbname(conninfo)
    with _connect(server.admin_conninfo) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        source = f'"{template}"' if template else "template0"
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {source}')


def test_without_create_an_empty_database_is_no_store_and_gets_no_tables(pg_database: str) -> None:
    """open_store(url) on an empty database: reads say "no store" and create nothing; a commit creates it."""
    store = open_store(f"postgresql:///?{pg_database.replace(' ', '&')}")
    assert isinstance(store, PostgresStore)
    for read in (store.revision, store.load, store.identity, store.verify_audit):
        with pytest.raises(StoreError, match=r"no store at .*`rule-engine deploy` creates one"):
            read()
    assert _tables(pg_database) == 0
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1")])
    assert store.revision() == 1
    assert len(store.identity()) >= 16
    store.close()


def test_a_database_dropped_and_recreated_is_refused(pg_server: PgServer, pg_database: str) -> None:
    """A store object that used a database refuses it once it was recreated (another identity), as SQLite does."""
    store = PostgresStore(pg_database, timeout=5)
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1")])
    first = store.identity()
    _replace_database(pg_server, pg_database)
    with pytest.raises(StoreError):  # the tables are gone: never silently recreated under a reader
        store.revision()
    assert _tables(pg_database) == 0
    other = PostgresStore(pg_database, timeout=5)
    other.commit(0, kit.state("v2"))
    assert other.identity() != first
    for read in (store.revision, store.load, store.mark):
        with pytest.raises(StoreError, match="replaced or recreated"):
            read()
    with pytest.raises(StoreError, match="replaced or recreated"):
        store.commit(1, kit.state("v1"))
    assert other.revision() == 1
    other.close()
    store.close()


def test_a_restore_of_an_older_copy_is_refused(pg_server: PgServer, pg_database: str) -> None:
    """A database restored from an older copy (same identity, lower revision) is refused, not adopted."""
    name = conninfo_dbname(pg_database)
    first = PostgresStore(pg_database, timeout=5)
    first.commit(0, kit.state("v1"))
    first.close()
    with _connect(pg_server.admin_conninfo) as conn:
        conn.execute(f'CREATE DATABASE "{name}_copy" TEMPLATE "{name}"')
    try:
        store = PostgresStore(pg_database, timeout=5)
        state = store.load()
        store.commit(state.revision, kit.state("v1", "v2"))
        assert store.revision() == 2
        _replace_database(pg_server, pg_database, template=f"{name}_copy")
        with pytest.raises(StoreError, match="went backwards from 2 to 1"):
            store.revision()
        store.close()
        fresh = PostgresStore(pg_database, timeout=5)  # a new process adopts the restored copy
        assert fresh.revision() == 1
        fresh.close()
    finally:
        with _connect(pg_server.admin_conninfo) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}_copy" WITH (FORCE)')


def test_the_identity_cannot_be_changed_even_by_the_owner(store: PostgresStore, pg_database: str) -> None:
    """A trigger refuses changing meta.store_id."""
    import psycopg

    store.commit(0, kit.state("v1"))
    with _connect(pg_database) as conn, pytest.raises(psycopg.Error, match="identity never changes"):
        conn.execute("UPDATE meta SET store_id = 'another'")
    assert len(store.identity()) >= 16


def test_a_schema_1_database_is_migrated_in_place_keeping_its_history(pg_database: str) -> None:
    """Schema 1 (no identity, no hashes, no fallbacks) is upgraded to 2; old entries stay, the chain starts after."""
    from rule_engine.stores._pg_schema import MIGRATIONS, MIGRATIONS_TABLE

    with _connect(pg_database) as conn:
        conn.execute(MIGRATIONS_TABLE)
        conn.execute(MIGRATIONS[0][2].encode())
        conn.execute("INSERT INTO schema_migrations (version, description) VALUES (1, 'initial')")
        conn.execute(
            "INSERT INTO audit (at, action, version_id, to_state, actor, reason, revision)"
            " VALUES (1.0, 'prepare', 'v0', 'staged', 'old', '', 1), (2.0, 'activate', 'v0', 'active', 'old', '', 1)"
        )
        conn.execute("UPDATE meta SET revision = 1")
        conn.execute("INSERT INTO state (id, doc) VALUES (1, '{}'::jsonb)")
        conn.execute(
            "INSERT INTO health_lifetime VALUES ('v0', 5, 1, 0, 10.0, '{}'::bigint[], '{}'::jsonb, '{}'::jsonb)"
        )
    store = PostgresStore(pg_database, create=False)
    assert store.schema_version() == 1
    assert store.migrate() == (1, SCHEMA_VERSION)
    assert store.revision() == 1
    check = store.verify_audit()
    assert (check.ok, check.checked, check.unhashed, check.head) == (True, 0, 2, None)
    store.commit(1, kit.state("v1"), audit=[kit.entry("v1")])
    check = store.verify_audit()
    assert (check.ok, check.checked, check.unhashed) == (True, 1, 2)
    assert [e.seq for e in store.audit_log()] == [1, 2, 3]
    assert store.health(["v0"]) == {"v0": HealthCounts(5, 1, 0, 10.0)}
    with _connect(pg_database) as conn:
        rows = conn.execute("SELECT version, description FROM schema_migrations ORDER BY version").fetchall()
    assert [v for v, _ in rows] == [1, 2, 3, 4]
    store.close()


def test_tampering_with_the_audit_breaks_the_chain_at_that_entry(store: PostgresStore, pg_database: str) -> None:
    """An entry rewritten by someone who bypassed the trigger fails verification at its seq; a removed last one too."""
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1"), kit.entry("v1", "carol"), kit.entry("v1", "dave")])
    assert store.verify_audit().ok
    with _connect(pg_database) as conn:
        conn.execute("ALTER TABLE audit DISABLE TRIGGER audit_append_only")
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    check = store.verify_audit()
    assert (check.ok, check.first_bad_seq, check.checked) == (False, 2, 1)
    with _connect(pg_database) as conn:
        conn.execute("UPDATE audit SET actor = 'carol' WHERE seq = 2")
        conn.execute("DELETE FROM audit WHERE seq = 3")
    check = store.verify_audit()
    assert (check.ok, check.first_bad_seq) == (False, 3)
    assert "entries were removed" in check.reason


@pytest.mark.parametrize(
    ("statement", "read"),
    [
        ("UPDATE state SET doc = '{\"versions\": 5}'::jsonb", "load"),
        ('UPDATE state SET doc = \'{"active": "ghost"}\'::jsonb', "load"),
        ("UPDATE state SET doc = '[1, 2]'::jsonb", "load"),
        ("UPDATE health_lifetime SET histogram = '{1,NULL}'", "health"),
        ("UPDATE health_lifetime SET decisions = '[1]'::jsonb", "health"),
        ("DELETE FROM state", "load"),
    ],
)
def test_a_corrupt_row_is_a_store_error(store: PostgresStore, pg_database: str, statement: str, read: str) -> None:
    """Every read back is decoded and checked: a corrupt row is a StoreError naming the store."""
    store.commit(0, kit.state("v1"), audit=[kit.entry("v1")])
    store.add_health("v1", 0.0, HealthCounts(1))
    with _connect(pg_database) as conn:
        conn.execute(statement.encode())
    call = store.load if read == "load" else lambda: store.health(["v1"])
    with pytest.raises(StoreError, match="re_test_"):
        call()


def test_a_nul_character_is_refused_whole(store: PostgresStore) -> None:
    """PostgreSQL text cannot hold NUL: such a commit is one StoreError and writes nothing."""
    store.commit(0, kit.state("v1"))
    with pytest.raises(StoreError):
        store.commit(1, kit.state("v1"), audit=[kit.entry("v1", "a\x00b")])
    assert store.revision() == 1
    assert store.audit_log() == []
    assert store.verify_audit().ok


def test_fallbacks_are_stored_and_added(store: PostgresStore) -> None:
    """fallbacks and fallback_errors persist and add up per bucket and over the lifetime."""
    store.add_health("v1", 0.0, HealthCounts(2, fallbacks=3, fallback_errors=1))
    store.add_health_many([("v1", 0.0, HealthCounts(fallbacks=4)), ("v1", 10.0, HealthCounts(1, fallback_errors=2))])
    assert store.health(["v1"], since=0.0, until=5.0) == {"v1": HealthCounts(2, fallbacks=7, fallback_errors=1)}
    assert store.health(["v1"]) == {"v1": HealthCounts(3, fallbacks=7, fallback_errors=3)}
    assert store.health(["v1"], until=-1.0) == {"v1": HealthCounts()}
