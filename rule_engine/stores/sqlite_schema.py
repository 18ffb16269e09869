"""The SQLite store's file: its schema (created, or upgraded from schema 1 in place) and its safety checks.

Schema 2 adds, to schema 1, the store's identity and the audit hash chain::

    meta.store_id           random id written when the store is created (a trigger refuses changing it)
    meta.audit_chain_from   seq of the first hashed audit entry (1 for a store created with schema 2;
                            for an upgraded store, the first entry written after the upgrade)
    meta.audit_head         hash of the last audit entry (None while the chain is empty)
    audit.hash              sha256 chained to the previous entry's hash (None for older entries)

and a trigger refusing an ``INSERT`` that reuses an audit ``seq`` (``INSERT OR REPLACE`` deletes the
old row without firing ``BEFORE DELETE`` triggers unless ``recursive_triggers`` is on; the store
sets that pragma on every connection as well).

File checks (:func:`check_files`): the store path and its ``-wal`` / ``-shm`` companions must not be
symbolic links nor anything but regular files, and must not be writable by group or others
(:class:`StoreError` says how to fix it); files readable by group or others and owned by this user
are tightened to 0600.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from pathlib import Path

from rule_engine.errors import StoreError
from rule_engine.stores.deployments import UNBOUND, migrated_name

__all__ = ["SCHEMA_VERSION", "check_files", "create_schema", "open_file", "upgrade"]

SCHEMA_VERSION = 3

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    store_id TEXT
);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    audit_chain_from INTEGER,
    audit_head TEXT,
    mirrored_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS state (
    deployment TEXT PRIMARY KEY,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    deployment TEXT NOT NULL,
    version_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (deployment, version_id)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    version_id TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    strategy TEXT,
    revision INTEGER NOT NULL,
    hash TEXT,
    origin TEXT,
    deployment TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS health (
    deployment TEXT NOT NULL,
    version_id TEXT NOT NULL,
    bucket_start REAL NOT NULL,
    counts TEXT NOT NULL,
    PRIMARY KEY (deployment, version_id, bucket_start)
);
CREATE TABLE IF NOT EXISTS health_lifetime (
    deployment TEXT NOT NULL,
    version_id TEXT NOT NULL,
    counts TEXT NOT NULL,
    PRIMARY KEY (deployment, version_id)
);
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS audit_by_deployment ON audit (deployment, seq)",
    "CREATE INDEX IF NOT EXISTS audit_by_version ON audit (deployment, version_id, seq)",
    "CREATE INDEX IF NOT EXISTS health_by_start ON health (bucket_start)",
)

_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit {_APPEND_ONLY}",
    f"CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit {_APPEND_ONLY}",
    "CREATE TRIGGER IF NOT EXISTS audit_no_overwrite BEFORE INSERT ON audit"
    f" WHEN EXISTS (SELECT 1 FROM audit WHERE seq = NEW.seq) {_APPEND_ONLY}",
    "CREATE TRIGGER IF NOT EXISTS meta_identity_is_fixed BEFORE UPDATE OF store_id ON meta"
    " WHEN OLD.store_id IS NOT NULL AND NEW.store_id IS NOT OLD.store_id"
    " BEGIN SELECT RAISE(ABORT, 'a store''s identity never changes'); END",
)
_UPGRADE_1 = (
    "ALTER TABLE meta ADD COLUMN store_id TEXT",
    "ALTER TABLE meta ADD COLUMN audit_chain_from INTEGER",
    "ALTER TABLE meta ADD COLUMN audit_head TEXT",
    "ALTER TABLE audit ADD COLUMN hash TEXT",
    "ALTER TABLE audit ADD COLUMN origin TEXT",
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables of a new store, with a new identity, in one transaction (once, whoever races)."""
    tables = [part for part in _TABLES.split(";") if part.strip()]
    _in_transaction(
        conn,
        [*tables, *_INDEXES, *_TRIGGERS],
        f"INSERT OR IGNORE INTO meta (id, schema_version, store_id) VALUES (1, {SCHEMA_VERSION}, '{uuid.uuid4()}')",
    )


def upgrade(conn: sqlite3.Connection) -> None:
    """Upgrade a schema 1 or 2 store in place to schema 3 (each step once, whoever races)."""
    _in_transaction(
        conn,
        [*_UPGRADE_1, *_TRIGGERS],
        "UPDATE meta SET schema_version = 2, store_id = '" + str(uuid.uuid4()) + "',"
        " audit_chain_from = (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit) WHERE id = 1",
        only_if_schema=1,
    )
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
        if row is not None and row[0] == 2:
            for statement in upgrade_2_statements(conn):
                conn.execute(*statement)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def upgrade_2_statements(conn: sqlite3.Connection) -> list[tuple[str, tuple[object, ...]]]:
    """Schema 2 -> 3: everything the store holds becomes one deployment, named after its active policy.

    The name is the ``bundle_id`` of the active (else the newest) version, or ``default``; a store
    that never committed gets no deployment (its first deploy names it). The revision, the audit
    chain's bounds and every entry, bundle, health bucket and fleet row move to that deployment
    unchanged, so the chain still verifies and the same versions serve.
    """
    revision, chain_from, head = conn.execute(
        "SELECT revision, audit_chain_from, audit_head FROM meta WHERE id = 1"
    ).fetchone()
    row = conn.execute("SELECT json FROM state WHERE id = 1").fetchone()
    name = migrated_name(row[0] if row is not None else None, int(revision))
    mirrored = conn.execute("SELECT audit_seq FROM mirror WHERE id = 1").fetchone() if _has(conn, "mirror") else None
    out: list[tuple[str, tuple[object, ...]]] = [(part, ()) for part in _TABLES.split(";") if "deployments" in part]
    if name != UNBOUND:
        out.append(
            (
                "INSERT INTO deployments (name, revision, audit_chain_from, audit_head, mirrored_seq) VALUES (?, ?, ?, ?, ?)",
                (name, revision, chain_from, head, mirrored[0] if mirrored else 0),
            )
        )
    moved = {"state": "json", "bundles": "version_id, digest, json", "health": "version_id, bucket_start, counts"}
    moved["health_lifetime"] = "version_id, counts"
    for table, columns in moved.items():
        create = next(part for part in _TABLES.split(";") if f"EXISTS {table} (" in part)
        out += [
            (f"ALTER TABLE {table} RENAME TO {table}_v2", ()),
            (create, ()),
            (f"INSERT INTO {table} (deployment, {columns}) SELECT ?, {columns} FROM {table}_v2", (name,)),
            (f"DROP TABLE {table}_v2", ()),
        ]
    out += [
        ("ALTER TABLE audit ADD COLUMN deployment TEXT NOT NULL DEFAULT ''", ()),
        ("DROP TRIGGER audit_no_update", ()),  # the one UPDATE the audit ever sees: naming its deployment
        ("UPDATE audit SET deployment = ?", (name,)),
        (_TRIGGERS[0], ()),
        ("DROP INDEX IF EXISTS audit_by_version", ()),
        *((index, ()) for index in _INDEXES),
    ]
    for table in ("instances", "health_outbox"):
        if _has(conn, table):
            out += [
                (f"ALTER TABLE {table} ADD COLUMN deployment TEXT NOT NULL DEFAULT ''", ()),
                (f"UPDATE {table} SET deployment = ?", (name,)),
            ]
    out += [(f"ALTER TABLE meta DROP COLUMN {c}", ()) for c in ("revision", "audit_chain_from", "audit_head")]
    out.append((f"UPDATE meta SET schema_version = {SCHEMA_VERSION} WHERE id = 1", ()))
    return out


def _has(conn: sqlite3.Connection, table: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None
    )


def _in_transaction(
    conn: sqlite3.Connection, statements: list[str], last: str, only_if_schema: int | None = None
) -> None:
    conn.execute("BEGIN IMMEDIATE")  # processes racing to create or upgrade a file do it once
    try:
        if only_if_schema is not None:
            row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
            if row is None or row[0] != only_if_schema:
                conn.execute("ROLLBACK")
                return  # another process upgraded it meanwhile
        for statement in statements:
            conn.execute(statement)
        conn.execute(last)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# --- files ----------------------------------------------------------------------------------------


def open_file(path: Path, *, create: bool) -> tuple[int, int] | None:
    """Check the store file (creating it 0600 if ``create``); its (device, inode), or None if missing."""
    flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_files(path)
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            raise _symlink(path) from exc
        raise StoreError(f"cannot open the state file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        found = os.fstat(fd)
        _check_mode(path, found, fd)
    finally:
        os.close(fd)
    return found.st_dev, found.st_ino


def check_files(path: Path) -> None:
    """Refuse symbolic links, non-regular files and files writable by others at the store path and companions."""
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        try:
            found = os.lstat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(found.st_mode):
            raise _symlink(Path(name))
        if not stat.S_ISREG(found.st_mode):
            raise StoreError(f"{name!r} is not a regular file; refusing to use it as a state file")
        if name != str(path) and found.st_mode & 0o077:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # gone meanwhile (SQLite removes -wal and -shm when the last connection closes)
            try:
                _check_mode(Path(name), os.fstat(fd), fd)
            finally:
                os.close(fd)


def _check_mode(path: Path, found: os.stat_result, fd: int) -> None:
    mode = stat.S_IMODE(found.st_mode)
    if mode & 0o022:
        raise StoreError(
            f"{str(path)!r} is writable by group or others (mode {mode:04o}): whoever can write it decides "
            f"what is served; refusing to use it (run `chmod 600 {path}`)"
        )
    if mode & 0o044 and found.st_uid == os.geteuid():
        os.fchmod(fd, 0o600)  # readable by others: tighten it, the state and audit are the owner's


def _symlink(path: Path) -> StoreError:
    return StoreError(
        f"{str(path)!r} is a symbolic link; refusing to follow it (a state file must be the file itself: "
        "use the real path in the store URL)"
    )
