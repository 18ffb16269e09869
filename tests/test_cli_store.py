"""``rule-engine store migrate`` and ``rule-engine audit verify`` on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from test_store_integrity import _schema_1_store

from rule_engine.cli import cli

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _pg_url(conninfo: str) -> str:
    return "postgresql:///?" + conninfo.replace(" ", "&")


def test_store_migrate_upgrades_a_schema_1_sqlite_file_once(tmp_path: Path) -> None:
    """A schema 1 SQLite file is upgraded in place (schema 1 -> 3); a second run has nothing to do."""
    path = tmp_path / "state.db"
    _schema_1_store(path)
    first = _run("store", "migrate", "--store", f"sqlite:///{path}")
    assert first.exit_code == 0, first.output
    assert first.output.strip() == f"sqlite:///{path}: schema 1 -> 3"
    again = _run("--store", f"sqlite:///{path}", "store", "migrate", "--json")
    assert json.loads(again.output) == {"store": f"sqlite:///{path}", "from": 3, "to": 3, "changed": False}


def test_store_migrate_on_a_missing_sqlite_file_is_one_error_line(tmp_path: Path) -> None:
    """Migrating nothing is an error naming the file; no file is created."""
    result = _run("store", "migrate", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 1
    assert result.output.startswith("error: no store at")
    assert not (tmp_path / "none.db").exists()


def test_audit_verify_says_ok_and_names_a_broken_entry(tmp_path: Path) -> None:
    """audit verify: exit 0 with the summary; a rewritten entry exits 1 naming it; --json prints the verdict."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    assert _run("--store", url, "deploy", str(BUNDLES / "gateway-v1.json")).exit_code == 0
    ok = _run("--store", url, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("audit chain ok: 2 entries checked")
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    conn.close()
    broken = _run("--store", url, "audit", "verify")
    assert broken.exit_code == 1
    assert broken.output.strip().splitlines() == [
        "error: audit chain broken at entry 2: entry 2 does not match its hash: it, or an entry before it, "
        "was changed, removed or inserted"
    ]
    as_json = _run("--store", url, "audit", "verify", "--json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.output.split("\nerror:")[0])["first_bad_seq"] == 2


def test_store_migrate_and_audit_verify_on_postgresql(pg_database: str) -> None:
    """An empty database is migrated 0 -> 4 (then nothing to do); audit verify checks what deploy wrote."""
    url = _pg_url(pg_database)
    first = _run("--store", url, "store", "migrate")
    assert first.exit_code == 0, first.output
    assert first.output.strip().endswith("schema 0 -> 4")
    assert _run("--store", url, "store", "migrate").output.strip().endswith("schema 4 -> 4 (nothing to do)")
    assert _run("--store", url, "audit", "verify").output.startswith("audit chain ok: 0 entries checked")
    assert _run("--store", url, "deploy", str(BUNDLES / "gateway-v1.json")).exit_code == 0
    verdict = json.loads(_run("--store", url, "audit", "verify", "--json").output)
    assert (verdict["ok"], verdict["checked"]) == (True, 2)


def test_audit_verify_on_an_empty_postgresql_database_is_no_store(pg_database: str) -> None:
    """Reading a database that holds no store is one error line, and creates nothing."""
    result = _run("--store", _pg_url(pg_database), "audit", "verify")
    assert result.exit_code == 1
    assert result.output.startswith("error: no store at")
