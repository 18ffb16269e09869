"""``rule-engine store migrate`` and ``rule-engine audit verify``: the store's schema and its audit chain.

``store migrate`` brings a store's schema to the version this library writes: on PostgreSQL it applies
the missing migrations (``PostgresStore.migrate``; run it as the schema owner, see docs/fleet.md), on
SQLite it is the in-place upgrade opening the file does (schema 1 or 2 -> 3), and a ``memory://`` store has
nothing to migrate. ``audit verify`` checks the audit hash chain of the deployment (``--deployment``,
else the only one; ``StateStore.verify_audit``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import click

from rule_engine.cli._common import CliContext, CommandFailed, json_option, managed
from rule_engine.cli.output import echo, emit
from rule_engine.stores._pg_conninfo import redact_url
from rule_engine.stores.base import StateStore, open_store

__all__ = ["audit", "store"]

_store_option = click.option(
    "--store", "store_url", default=None, metavar="URL", help="The store (default: the global --store, or its default)."
)


def _url(state: CliContext, store_url: str | None) -> str:
    if store_url is not None:
        state.store_url = store_url
    return state.url


@click.group()
def store() -> None:
    """The state store itself: its schema."""


@store.command()
@_store_option
@json_option
@click.pass_context
def migrate(ctx: click.Context, store_url: str | None, as_json: bool) -> None:
    """Bring the store's schema to the version this rule_engine writes (prints ``schema A -> B``)."""
    with managed(ctx) as state:
        url = _url(state, store_url)
        before, after = _migrate(url)
        shown = redact_url(url)
        nothing = " (nothing to do)" if before == after else ""
        data = {"store": shown, "from": before, "to": after, "changed": before != after}
        emit(as_json, data, lambda: echo(f"{shown}: schema {before} -> {after}{nothing}"))


def _migrate(url: str) -> tuple[int, int]:
    if url.startswith(("postgresql://", "postgres://")):
        from rule_engine.stores.postgres import PostgresStore

        pg = PostgresStore.from_url(url, create=True)
        try:
            return pg.migrate()
        finally:
            pg.close()
    if url.startswith("sqlite://"):
        from rule_engine.stores.sqlite import SCHEMA_VERSION, SQLiteStore

        before = _sqlite_schema(url)
        opened = SQLiteStore.from_url(url, create=False)  # opening upgrades a schema 1 or 2 file in place
        try:
            opened.identity()
        finally:
            opened.close()
        return (before if before is not None else SCHEMA_VERSION), SCHEMA_VERSION
    with contextlib.closing(open_store(url)):  # memory:// (or an unsupported URL: its one-line error)
        return 0, 0


def _sqlite_schema(url: str) -> int | None:
    """The schema version an SQLite store file holds, read without changing it (None if unreadable)."""
    path = Path(url[len("sqlite:///") :].partition("?")[0])
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT schema_version FROM meta WHERE id = 1").fetchone()
    except sqlite3.Error:
        return None
    return int(row[0]) if row is not None and isinstance(row[0], int) else None


@click.group()
def audit() -> None:
    """The audit trail's integrity."""


@audit.command()
@_store_option
@json_option
@click.pass_context
def verify(ctx: click.Context, store_url: str | None, as_json: bool) -> None:
    """Check the audit hash chain: exit 0 when every entry verifies, 1 naming the first that does not."""
    with managed(ctx) as state:
        _url(state, store_url)
        opened: StateStore = state.store()
        try:
            check = opened.verify_audit()
        finally:
            opened.close()
        if check.ok or as_json:
            emit(as_json, check.to_dict(), lambda: echo(check.summary()))
        if not check.ok:
            raise CommandFailed(check.summary())
