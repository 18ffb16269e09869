"""PostgreSQL store addresses: our options, and a password that never shows (no server needed)."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from _support_postgres import _unavailable
from hypothesis import given
from hypothesis import strategies as st

from rule_engine.errors import StoreURLError
from rule_engine.stores._pg_conninfo import parse_target, redact_url

PASSWORDS = st.text(
    alphabet=string.ascii_letters + string.digits + string.punctuation + "é€", min_size=1, max_size=40
).filter(lambda p: "*" not in p)


@given(password=PASSWORDS)
def test_a_url_password_is_never_in_the_display_form(password: str) -> None:
    """Whatever the password, the shown address and scrubbed messages do not contain it."""
    target = parse_target(f"postgresql://alice:{quote(password, safe='')}@db.internal:5432/rules?sslmode=require")
    assert password not in target.display
    assert quote(password, safe="") not in target.display
    assert password not in target.scrub(f"server said: password {password} is wrong for {target.display}")
    assert password in target.conninfo or quote(password, safe="") in target.conninfo  # libpq still gets it


@given(password=PASSWORDS)
def test_a_conninfo_password_is_never_in_the_display_form(password: str) -> None:
    """Quoted conninfo passwords (with \\' and \\\\ escapes) are masked too."""
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    target = parse_target(f"host=/run/postgresql user=alice password='{escaped}' dbname=rules")
    assert password not in target.display
    assert password not in target.scrub(f"oops {password}")


def test_our_options_are_taken_out_and_the_rest_passed_on() -> None:
    """``timeout`` and ``pool_size`` are ours; other query parameters reach libpq unchanged."""
    target = parse_target("postgresql:///rules?host=%2Frun%2Fpostgresql&timeout=2.5&pool_size=3&sslmode=disable")
    assert (target.timeout, target.pool_size) == (2.5, 3)
    assert target.conninfo == "postgresql:///rules?host=%2Frun%2Fpostgresql&sslmode=disable"
    assert parse_target("postgresql://h/db").timeout == 5.0
    for bad in ("postgresql://h/db?timeout=0", "postgresql://h/db?timeout=-1", "postgresql://h/db?pool_size=65"):
        with pytest.raises(StoreURLError):
            parse_target(bad)
    with pytest.raises(StoreURLError, match="not a PostgreSQL store URL"):
        parse_target("mysql://u:secret@h/db")


def test_redact_url_leaves_addresses_without_a_password_alone() -> None:
    """Addresses without a password come back unchanged."""
    for address in ("sqlite:///state.db", "memory://", "postgresql://alice@h/db", "host=/tmp dbname=x"):
        assert redact_url(address) == address
    assert redact_url("postgresql://alice:pw@h/db?password=pw2") == "postgresql://alice:***@h/db?password=***"


def test_missing_postgresql_skips_loudly_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a server the PostgreSQL tests skip with a loud reason, except under CI=true, where they fail."""
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="!!! PostgreSQL tests need a server"):
        _unavailable("no binaries")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: failing instead of skipping"):
        _unavailable("no binaries")
