"""Bearer tokens for the HTTP API: a tokens file maps names to SHA-256 hashes of their tokens.

The file is JSON, ``{"tokens": {"NAME": "sha256:HEX", ...}}``, written by ``rule-engine token create``.
Only hashes are stored; a token is shown once, when it is created. The file must not be readable by
group or others (it is refused otherwise, as ssh refuses a private key). A presented token is hashed
and compared with every stored hash with :func:`hmac.compare_digest`, so the time taken does not
depend on where (or whether) it matches. The matching name is the actor in the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rule_engine.errors import RuleEngineError

__all__ = ["TOKEN_NAME", "TokenFileError", "Tokens", "create_token", "hash_token"]

TOKEN_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MAX_TOKENS = 1000
MAX_TOKEN_LENGTH = 256
_PREFIX = "sha256:"


class TokenFileError(RuleEngineError, ValueError):
    """The tokens file is unsafe (readable by others) or malformed."""


def hash_token(token: str) -> str:
    """The stored form of a token: ``sha256:`` and the hex digest."""
    return _PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token names and their hashes; :meth:`name_of` says whose a presented token is."""

    hashes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokens:
        """Read a tokens file, refusing one that group or others may read or write."""
        file = Path(path)
        try:
            mode = file.stat().st_mode
        except FileNotFoundError:
            raise TokenFileError(
                f"tokens file {file} does not exist (create one with 'rule-engine token create NAME --tokens {file}')"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenFileError(
                f"tokens file {file} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run 'chmod 600 {file}'"
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"tokens file {file} is not JSON: {exc}") from None
        return cls.from_dict(data, str(file))

    @classmethod
    def from_dict(cls, data: object, source: str = "tokens") -> Tokens:
        """Validate the JSON form ``{"tokens": {NAME: "sha256:HEX"}}``."""
        entries = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise TokenFileError(f'{source}: expected {{"tokens": {{"NAME": "sha256:HEX"}}}}')
        if len(entries) > MAX_TOKENS:
            raise TokenFileError(f"{source}: more than {MAX_TOKENS} tokens")
        hashes: dict[str, str] = {}
        for name, digest in entries.items():
            if not TOKEN_NAME.match(name):
                raise TokenFileError(f"{source}: token name {name!r} must match {TOKEN_NAME.pattern}")
            if not (isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)):
                raise TokenFileError(f"{source}: token {name!r} must map to 'sha256:' and 64 hex digits")
            hashes[name] = digest
        return cls(hashes)

    def name_of(self, token: str) -> str | None:
        """The name of the token, or None if no stored hash matches (constant time in the token)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        presented = hash_token(token).encode("ascii")
        found: str | None = None
        for name, digest in self.hashes.items():  # compare with every hash: no early exit
            if hmac.compare_digest(presented, digest.encode("ascii")) and found is None:
                found = name
        return found


def create_token(path: str | os.PathLike[str], name: str) -> str:
    """Add (or replace) token ``name`` in the tokens file and return the new token (shown only once).

    The file is created with mode 0600 and rewritten atomically (a temporary file renamed over it).
    """
    if not TOKEN_NAME.match(name):
        raise TokenFileError(f"token name {name!r} must match {TOKEN_NAME.pattern}")
    file = Path(path)
    existing = Tokens.load(file).hashes if file.exists() else {}
    token = "re_" + secrets.token_urlsafe(32)
    hashes = {**existing, name: hash_token(token)}
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump({"tokens": hashes}, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(temporary, file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return token
