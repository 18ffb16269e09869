"""The PostgreSQL store's schema, as numbered migrations.

``schema_migrations`` records every migration applied (version, description, when). A store applies
the missing ones (each in the same transaction as its record, under an advisory lock so processes
opening a new database at once migrate it once) and refuses a database whose schema is newer than
the last migration it knows. A migration is never edited once released: a change is a new entry.

Health counters are columns added in SQL (``INSERT ... ON CONFLICT DO UPDATE SET evaluations =
t.evaluations + excluded.evaluations``): the latency histogram is a ``bigint[]`` added elementwise by
``rule_engine_add_arrays``, and the per-decision and per-rule counts are ``jsonb`` objects merged by
``rule_engine_add_counts`` (keys unioned, values summed), so concurrent flushes from many processes
add up without any read-modify-write in the client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from rule_engine.errors import StoreError
from rule_engine.stores._pg_fleet import FLEET_GRANTS, FLEET_SQL
from rule_engine.stores.deployments import UNBOUND, migrated_name

__all__ = ["ADVISORY_LOCK", "APP_GRANTS", "MIGRATIONS", "SCHEMA_VERSION", "apply_migrations", "schema_version"]

ADVISORY_LOCK = 0x72756C65  # "rule": serialises migrations of one database

_V1 = """
CREATE TABLE meta (
    id integer PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL CHECK (revision >= 0)
);
INSERT INTO meta (id, revision) VALUES (1, 0);

CREATE TABLE state (
    id integer PRIMARY KEY CHECK (id = 1),
    doc jsonb NOT NULL
);

CREATE TABLE bundles (
    version_id text PRIMARY KEY,
    digest text NOT NULL,
    doc text NOT NULL
);

CREATE TABLE audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at double precision NOT NULL,
    action text NOT NULL,
    version_id text NOT NULL,
    from_state text,
    to_state text NOT NULL,
    actor text NOT NULL,
    reason text NOT NULL,
    strategy text,
    revision bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_by_version ON audit (version_id, seq);

CREATE FUNCTION rule_engine_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP;
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION rule_engine_audit_append_only();

CREATE FUNCTION rule_engine_add_arrays(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}'::bigint[])
    FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i)
$$;

CREATE FUNCTION rule_engine_add_counts(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(key, total), '{}'::jsonb)
    FROM (
        SELECT key, sum(value::bigint) AS total
        FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS both_sides
        GROUP BY key
    ) AS summed
$$;

CREATE TABLE health (
    version_id text NOT NULL,
    bucket_start double precision NOT NULL,
    evaluations bigint NOT NULL,
    errors bigint NOT NULL,
    timeouts bigint NOT NULL,
    latency_sum_us double precision NOT NULL,
    histogram bigint[] NOT NULL,
    decisions jsonb NOT NULL,
    rules jsonb NOT NULL,
    PRIMARY KEY (version_id, bucket_start)
);
CREATE INDEX health_by_start ON health (bucket_start);

CREATE TABLE health_lifetime (
    version_id text PRIMARY KEY,
    evaluations bigint NOT NULL,
    errors bigint NOT NULL,
    timeouts bigint NOT NULL,
    latency_sum_us double precision NOT NULL,
    histogram bigint[] NOT NULL,
    decisions jsonb NOT NULL,
    rules jsonb NOT NULL
);
"""

# Schema 2: the store's identity and the audit hash chain (as in the SQLite store's schema 2), and
# fallbacks counted apart in health. ``store_id`` is drawn in the transaction that applies this
# migration, which for a new database is the one that creates the tables. An upgraded store's chain
# starts after the entries it already holds (``audit_chain_from``); they stay unhashed.
_V2 = """
ALTER TABLE meta ADD COLUMN store_id text;
ALTER TABLE meta ADD COLUMN audit_chain_from bigint;
ALTER TABLE meta ADD COLUMN audit_head text;
UPDATE meta SET store_id = gen_random_uuid()::text,
    audit_chain_from = (SELECT coalesce(max(seq), 0) + 1 FROM audit);
ALTER TABLE meta ALTER COLUMN store_id SET NOT NULL;
ALTER TABLE meta ALTER COLUMN audit_chain_from SET NOT NULL;
ALTER TABLE meta ADD CONSTRAINT meta_chain_from_positive CHECK (audit_chain_from >= 1);

CREATE FUNCTION rule_engine_identity_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.store_id IS DISTINCT FROM OLD.store_id THEN
        RAISE EXCEPTION 'a store''s identity never changes';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER meta_identity_is_fixed BEFORE UPDATE ON meta
    FOR EACH ROW EXECUTE FUNCTION rule_engine_identity_is_fixed();

ALTER TABLE audit ADD COLUMN hash text;

ALTER TABLE health ADD COLUMN fallbacks bigint NOT NULL DEFAULT 0;
ALTER TABLE health ADD COLUMN fallback_errors bigint NOT NULL DEFAULT 0;
ALTER TABLE health_lifetime ADD COLUMN fallbacks bigint NOT NULL DEFAULT 0;
ALTER TABLE health_lifetime ADD COLUMN fallback_errors bigint NOT NULL DEFAULT 0;
"""

_V3 = "ALTER TABLE audit ADD COLUMN origin text;\n" + FLEET_SQL + ";"

# Schema 4: several deployments in one store. Every row gains its deployment; the revision and the
# audit chain's bounds move to one row per deployment; meta keeps the identity and a store-wide commit
# counter (its row lock serialises commits, so the store's one audit seq stays gap-free and ordered).
# What the store held becomes one deployment named after its active policy (``migrated_name``).
_V4_TABLE = """
CREATE TABLE deployments (
    name text PRIMARY KEY,
    revision bigint NOT NULL CHECK (revision >= 0),
    audit_chain_from bigint NOT NULL CHECK (audit_chain_from >= 1),
    audit_head text
)
"""
_V4_KEYS = {
    "state": "deployment",
    "bundles": "deployment, version_id",
    "health": "deployment, version_id, bucket_start",
    "health_lifetime": "deployment, version_id",
}


def _v4(conn: psycopg.Connection[Any]) -> None:
    """Schema 3 -> 4 (see above); ``ADD COLUMN ... DEFAULT name`` names every existing row without an UPDATE."""
    meta = conn.execute("SELECT revision, audit_chain_from, audit_head FROM meta WHERE id = 1").fetchone()
    doc = conn.execute("SELECT doc::text FROM state WHERE id = 1").fetchone()
    revision = int(meta[0]) if meta is not None else 0
    name = migrated_name(doc[0] if doc is not None else None, revision)
    conn.execute(_V4_TABLE.encode())
    if name != UNBOUND and meta is not None:
        conn.execute(
            "INSERT INTO deployments (name, revision, audit_chain_from, audit_head) VALUES (%s, %s, %s, %s)",
            (name, revision, meta[1], meta[2]),
        )
    named = sql.SQL("ALTER TABLE {} ADD COLUMN deployment text NOT NULL DEFAULT {}")
    for table in ("state", "bundles", "health", "health_lifetime", "audit"):
        conn.execute(named.format(sql.Identifier(table), sql.Literal(name)))
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN deployment DROP DEFAULT").format(sql.Identifier(table)))
    conn.execute("ALTER TABLE state DROP COLUMN id")  # its primary key and CHECK (id = 1) go with it
    for table, key in _V4_KEYS.items():
        if table != "state":
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(f"{table}_pkey")))  # fmt: skip
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(sql.Identifier(table), sql.SQL(key)))
    conn.execute("DROP INDEX audit_by_version")
    conn.execute("CREATE INDEX audit_by_version ON audit (deployment, version_id, seq)")
    conn.execute("CREATE INDEX audit_by_deployment ON audit (deployment, seq)")
    conn.execute(named.format(sql.Identifier("instances"), sql.Literal("")))
    conn.execute(sql.SQL("UPDATE instances SET deployment = {}").format(sql.Literal(name)))
    conn.execute("ALTER TABLE meta DROP COLUMN audit_chain_from, DROP COLUMN audit_head")


# (version, description, SQL or a function of the connection). Append only.
MIGRATIONS: tuple[tuple[int, str, str | Callable[[psycopg.Connection[Any]], None]], ...] = (
    (1, "initial schema: meta, state, bundles, audit, health", _V1),
    (2, "store identity, audit hash chain, fallbacks in health", _V2),
    (3, "audit origin (OS account and host), fleet instances", _V3),
    (4, "several deployments in one store", _v4),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

HEALTH_COLUMNS = (
    "evaluations, errors, timeouts, latency_sum_us, histogram, decisions, rules, fallbacks, fallback_errors"
)
HEALTH_ADD = """
    evaluations = t.evaluations + excluded.evaluations,
    errors = t.errors + excluded.errors,
    timeouts = t.timeouts + excluded.timeouts,
    latency_sum_us = t.latency_sum_us + excluded.latency_sum_us,
    histogram = rule_engine_add_arrays(t.histogram, excluded.histogram),
    decisions = rule_engine_add_counts(t.decisions, excluded.decisions),
    rules = rule_engine_add_counts(t.rules, excluded.rules),
    fallbacks = t.fallbacks + excluded.fallbacks,
    fallback_errors = t.fallback_errors + excluded.fallback_errors
"""
UPSERT_BUCKET = f"""
INSERT INTO health AS t (deployment, version_id, bucket_start, {HEALTH_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s::bigint[], %s::jsonb, %s::jsonb, %s, %s)
ON CONFLICT (deployment, version_id, bucket_start) DO UPDATE SET {HEALTH_ADD}
"""
UPSERT_LIFETIME = f"""
INSERT INTO health_lifetime AS t (deployment, version_id, {HEALTH_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s::bigint[], %s::jsonb, %s::jsonb, %s, %s)
ON CONFLICT (deployment, version_id) DO UPDATE SET {HEALTH_ADD}
"""

# What the application role needs (schemas 1 and 2) (docs/fleet.md; tests/test_postgres_store.py runs it).
# The audit table gets INSERT and SELECT only: even with the trigger dropped, this role cannot
# rewrite history. Run as the schema owner after `rule-engine store migrate`.
APP_GRANTS = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON schema_migrations TO {role};
GRANT SELECT, UPDATE ON meta TO {role};
GRANT SELECT, INSERT, UPDATE ON deployments TO {role};
GRANT SELECT, INSERT, UPDATE ON state TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON bundles TO {role};
GRANT SELECT, INSERT ON audit TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON health TO {role};
GRANT SELECT, INSERT, UPDATE ON health_lifetime TO {role};
"""
APP_GRANTS += FLEET_GRANTS + "\n"


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version a database holds (0 when it holds no rule_engine tables)."""
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(found[0]) if found is not None else 0


def apply_migrations(conn: psycopg.Connection[Any], url: str) -> tuple[int, int]:
    """Apply the missing migrations in one transaction; ``(version before, version after)``.

    Each is recorded in ``schema_migrations`` in the same transaction, under an advisory lock (processes
    racing to migrate one database do it once). A newer schema than :data:`SCHEMA_VERSION`, or a role
    that may not create tables, is a :class:`StoreError` naming ``url`` (already redacted).
    """
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            conn.execute(MIGRATIONS_TABLE)
            found = schema_version(conn)
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"the database at {url!r} holds rule_engine schema {found}, newer than schema {SCHEMA_VERSION} "
                    "that this version of rule_engine knows; upgrade rule_engine"
                )
            for version, description, step in MIGRATIONS:
                if version > found:
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)", (version, description)
                    )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"the database at {url!r} needs schema {SCHEMA_VERSION} but this role may not create it "
            f"({exc}); run `rule-engine store migrate --store URL` as the schema owner"
        ) from exc
    return found, SCHEMA_VERSION
