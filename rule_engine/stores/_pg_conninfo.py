"""PostgreSQL store addresses: our own URL options, and passwords kept out of every message.

Pure string handling (no psycopg import), so the CLI can redact a store URL whatever extras are
installed. A store address is either a URL (``postgresql://user:pass@host:5432/db?sslmode=require``,
``postgres://...``, ``postgresql:///db?host=/run/postgresql`` for a unix socket) or a libpq conninfo
string (``host=/run/postgresql dbname=rules``). URLs may carry our options, which are removed before
libpq sees the rest:

- ``timeout=SECONDS`` (default 5): the bound on every store call (connect, statement, answer);
- ``pool_size=N`` (default 4, 1..64): connections kept for writers and readers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode

from rule_engine.errors import StoreURLError

__all__ = ["DEFAULT_POOL_SIZE", "DEFAULT_TIMEOUT", "PgTarget", "libpq_conninfo", "parse_target", "redact_url", "scrub"]

DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL_SIZE = 4
MAX_POOL_SIZE = 64
SCHEMES = ("postgresql://", "postgres://")
MASK = "***"

_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(://[^:/?#@\s]*:)([^@/?#\s]*)(@)")
_URL_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#\s]*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class PgTarget:
    """Where a PostgreSQL store connects, how it is shown, and what must never be shown."""

    conninfo: str  # for libpq only: may hold the password
    display: str  # the address with any password masked
    secrets: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this target masked."""
        return scrub(text, self.secrets)

    def __repr__(self) -> str:
        return f"PgTarget({self.display!r}, timeout={self.timeout:g}, pool_size={self.pool_size})"


def parse_target(address: str, *, timeout: float | None = None, pool_size: int | None = None) -> PgTarget:
    """Split a store URL or conninfo string into what libpq gets and what may be shown.

    Raises :class:`StoreURLError` (whose message never holds the password) for a bad option.
    """
    secrets = _secrets(address)
    display = scrub(redact_url(address), secrets)
    conninfo = address
    own: dict[str, str] = {}
    if address.startswith(SCHEMES):
        base, _, query_text = address.partition("?")
        query = parse_qsl(query_text, keep_blank_values=True)
        own = {k: v for k, v in query if k in ("timeout", "pool_size")}
        rest = [(k, v) for k, v in query if k not in own]
        conninfo = f"{base}?{urlencode(rest)}" if rest else base
    elif "://" in address:
        raise StoreURLError(f"not a PostgreSQL store URL: {display!r} (use postgresql://user@host/dbname)")
    chosen_timeout = timeout if timeout is not None else _number(own, "timeout", DEFAULT_TIMEOUT, display)
    chosen_pool = pool_size if pool_size is not None else int(_number(own, "pool_size", DEFAULT_POOL_SIZE, display))
    if not 0 < chosen_timeout <= 3600:
        raise StoreURLError(f"timeout must be between 0 and 3600 seconds in {display!r}, not {chosen_timeout!r}")
    if not 1 <= chosen_pool <= MAX_POOL_SIZE:
        raise StoreURLError(f"pool_size must be 1..{MAX_POOL_SIZE} in {display!r}, not {chosen_pool!r}")
    return PgTarget(conninfo, display, secrets, float(chosen_timeout), chosen_pool)


def libpq_conninfo(target: PgTarget) -> str:
    """The conninfo libpq gets: the target's, with ``connect_timeout`` and ``application_name`` defaulted."""
    import math

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        given = conninfo_to_dict(target.conninfo)
    except psycopg.Error as exc:
        raise StoreURLError(f"invalid PostgreSQL address {target.display!r}: {target.scrub(str(exc))}") from exc
    extra: dict[str, str | int] = {}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = max(2, math.ceil(target.timeout))
    if "application_name" not in given:
        extra["application_name"] = "rule_engine"
    return make_conninfo(target.conninfo, **extra)


def redact_url(address: str) -> str:
    """A store URL or conninfo string with any password replaced by ``***`` (other schemes unchanged)."""
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + m.group(3), address)
    text = _URL_QUERY_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    return _CONNINFO_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each secret (as given, and URL-decoded) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def _secrets(address: str) -> tuple[str, ...]:
    found: list[str] = []
    for match in _URL_USERINFO.finditer(address):
        found.append(match.group(2))
    for match in _URL_QUERY_PASSWORD.finditer(address):
        found.append(match.group(2))
    for match in _CONNINFO_PASSWORD.finditer(address):
        value = match.group(2)
        found.append(value)
        if value.startswith("'") and value.endswith("'") and len(value) >= 2:
            found.append(re.sub(r"\\(.)", r"\1", value[1:-1]))
    env = os.environ.get("PGPASSWORD")
    if env:
        found.append(env)
    decoded = [unquote(s) for s in found]
    # longest first, so a secret that contains another is masked whole
    return tuple(sorted({s for s in found + decoded if len(s) >= 1}, key=len, reverse=True))


def _number(options: dict[str, str], name: str, default: float, display: str) -> float:
    if name not in options:
        return default
    try:
        return float(options[name])
    except ValueError as exc:
        raise StoreURLError(f"{name} must be a number in {display!r}") from exc
