"""Commands for signed bundles: keygen, sign, and ``trust`` (a store that requires signatures, D25)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import stat
from pathlib import Path

import click

from rule_engine.bundle.models import load_bundle
from rule_engine.bundle.signing import (
    Ed25519Key,
    HmacKey,
    SigningKey,
    sign_bundle,
    write_signature,
)
from rule_engine.cli._common import (
    SIGNING_EXTRA_HINT,
    CommandFailed,
    by_option,
    default_actor,
    json_option,
    managed,
    os_account,
)
from rule_engine.cli.output import echo, emit
from rule_engine.errors import BundleValidationError
from rule_engine.evaluation.selftest import run_bundle_tests
from rule_engine.stores.base import open_store

# --- keygen and sign ----------------------------------------------------------------------------------

_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY_FIELD = {"ed25519": "private_key", "hmac-sha256": "secret"}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create ``path`` with ``mode`` (never overwriting) and write ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), mode)
        out.write(text)


def _key_json(data: dict[str, str]) -> str:
    return json.dumps(data, indent=2) + "\n"


def _read_signing_key(path: str) -> SigningKey:
    """The signing key in a ``keygen`` key file; CommandFailed naming the file and what is wrong."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = json.loads(handle.read())
    except OSError as exc:
        raise CommandFailed(f"key file {path!r}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise CommandFailed(f"key file {path!r}: not JSON (expected a file written by 'rule-engine keygen')") from None
    alg = data.get("alg") if isinstance(data, dict) else None
    if alg not in _KEY_FIELD:
        raise CommandFailed(f"key file {path!r}: 'alg' must be one of {', '.join(_KEY_FIELD)}")
    if "public_key" in data:
        raise CommandFailed(f"key file {path!r}: this is a public key (.pub); sign with the private .key file")
    field_name = _KEY_FIELD[alg]
    key_id, text = data.get("key_id"), data.get(field_name)
    if not isinstance(key_id, str) or not key_id or not isinstance(text, str):
        raise CommandFailed(f"key file {path!r}: needs a 'key_id' and a base64 {field_name!r}")
    try:
        raw = base64.b64decode(text, validate=True)
        key = Ed25519Key.from_private_bytes(key_id, raw) if alg == "ed25519" else HmacKey(key_id, raw)
    except (binascii.Error, ValueError) as exc:
        raise CommandFailed(f"key file {path!r}: bad {field_name!r}: {exc}") from None
    except ImportError:
        raise CommandFailed(f"key file {path!r}: {SIGNING_EXTRA_HINT}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CommandFailed(
            f"key file {path!r}: group or others may read or write it (mode {stat.S_IMODE(mode):04o}), "
            f"but it holds a signing key; fix it with: chmod 600 {path}"
        )
    return key


@click.command()
@click.option(
    "--alg",
    type=click.Choice(["ed25519", "hmac-sha256"]),
    default="ed25519",
    show_default=True,
    help="ed25519: a key pair (consumers hold only the public key); hmac-sha256: one shared secret.",
)
@click.option("--key-id", required=True, metavar="ID", help="The key's name, recorded in every signature.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR", help="Where to write ID.key"
)
@json_option
def keygen(alg: str, key_id: str, out_dir: str, as_json: bool) -> None:
    """Make a signing key: DIR/ID.key (private, mode 0600) and, for ed25519, DIR/ID.pub; print the trust entry."""
    if not _KEY_ID.fullmatch(key_id):
        raise click.BadParameter(
            f"{key_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param_hint="--key-id",
        )
    directory = Path(out_dir)
    private_path = directory / f"{key_id}.key"
    public_path = directory / f"{key_id}.pub" if alg == "ed25519" else None
    for path in (private_path, public_path):
        if path is not None and (path.exists() or path.is_symlink()):
            raise CommandFailed(
                f"{path}: already exists; refusing to overwrite a key (choose another --key-id or --out)"
            )
    if alg == "ed25519":
        try:
            from cryptography.hazmat.primitives import serialization

            pair = Ed25519Key.generate(key_id)
        except ImportError:
            raise CommandFailed(SIGNING_EXTRA_HINT) from None
        private = pair.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        trusted = _b64(pair.public_bytes())
    else:
        private = HmacKey.generate(key_id).secret
        trusted = _b64(private)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_new(private_path, _key_json({"alg": alg, "key_id": key_id, _KEY_FIELD[alg]: _b64(private)}), 0o600)
    if public_path is not None:
        _write_new(public_path, _key_json({"alg": alg, "key_id": key_id, "public_key": trusted}), 0o644)
    snippet = {alg: {key_id: trusted}}
    data = {
        "alg": alg,
        "key_id": key_id,
        "private_key_file": str(private_path),
        "public_key_file": str(public_path) if public_path else None,
        "trust": snippet,
    }

    def human() -> None:
        echo(f"wrote {private_path}")
        echo("  (private, mode 0600: keep it secret)")
        if public_path is not None:
            echo(f"wrote {public_path}  (public)")
        echo("trust file entry (merge into the file given to --trust / $RULE_ENGINE_TRUST):")
        echo("  " + json.dumps(snippet))
        if alg == "hmac-sha256":
            echo("  it holds the shared secret: keep the trust file private (mode 0600) too")
        echo(f"sign with: rule-engine sign BUNDLE --key {private_path}")

    emit(as_json, data, human)


@click.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--key", "key_file", required=True, metavar="KEYFILE", help="A private key file from 'keygen'.")
@json_option
def sign(bundle: str, key_file: str, as_json: bool) -> None:
    """Validate a bundle (and run its tests), sign its canonical form, and write BUNDLE.sig beside it."""
    key = _read_signing_key(key_file)
    parsed = load_bundle(bundle)
    try:
        run_bundle_tests(parsed)
    except BundleValidationError as exc:
        raise exc.with_source(bundle) from None
    signature = sign_bundle(parsed, key)
    path = write_signature(signature, bundle)
    data = {
        "bundle": bundle,
        "bundle_id": parsed.bundle_id,
        "version": parsed.version,
        "digest": signature.digest,
        "alg": signature.alg,
        "key_id": signature.key_id,
        "signature_file": str(path),
    }

    def human() -> None:
        echo(f"signed {bundle}  ({parsed.bundle_id} {parsed.version})")
        echo(f"  key:       {signature.alg}:{signature.key_id}")
        echo(f"  digest:    {signature.digest}")
        echo(f"  signature: {path}")

    emit(as_json, data, human)


# --- trust: the store's signature requirement ---------------------------------------------------------

_reason_option = click.option("--reason", default="", metavar="TEXT", help="Why (recorded in the audit trail).")


@click.group()
def trust() -> None:
    """Require signed bundles in the store (every process then verifies each bundle it loads), or stop."""


@trust.command("require")
@click.option(
    "--trust",
    "trust_path",
    default=None,
    metavar="FILE",
    help="Trust file to verify the store's versions with  [default: the global --trust / $RULE_ENGINE_TRUST]",
)
@click.option(
    "--evict-unsigned", is_flag=True, help="Take retained versions without a trusted signature out of history."
)
@_reason_option
@by_option
@json_option
@click.pass_context
def require(
    ctx: click.Context, trust_path: str | None, evict_unsigned: bool, reason: str, actor: str | None, as_json: bool
) -> None:
    """Require signatures: verify what the store holds with the trust file, then record the requirement."""
    with managed(ctx) as state:
        if trust_path is not None:
            state.trust_file = trust_path
        policy = state.trust()
        if policy is None:
            raise click.UsageError("trust require needs a trust file (--trust FILE or $RULE_ENGINE_TRUST)")
        manager = state.open(trust=policy)
        before, seen = manager.store.load().require_signatures, len(manager.audit_log())
        verified = manager.require_signatures(
            evict_unsigned=evict_unsigned, actor=actor or default_actor(), reason=reason, origin=os_account()
        )
        evicted = [e.version_id for e in manager.audit_log()[seen:] if e.action == "evict"]
        data = {
            "require_signatures": True,
            "changed": not before,
            "verified": verified,
            "evicted": evicted,
            "trusted": list(policy.key_ids),
        }

        def human() -> None:
            if before:
                echo("the store already requires signatures")
                return
            echo(f"the store now requires signatures: {verified} retained version(s) verified")
            if evicted:
                echo(f"  taken out of history (not signed by a trusted key): {', '.join(evicted)}")
            echo(f"  trusted keys: {', '.join(policy.key_ids)}")
            echo("  every process verifies each bundle it loads (give followers the public keys: --trust FILE)")

        emit(as_json, data, human)


@trust.command("allow-unsigned")
@click.option("--yes", is_flag=True, required=True, help="Confirm: processes stop verifying signatures.")
@_reason_option
@by_option
@json_option
@click.pass_context
def allow_unsigned(ctx: click.Context, yes: bool, reason: str, actor: str | None, as_json: bool) -> None:
    """Stop requiring signatures (audited); needs --yes."""
    with managed(ctx) as state:
        manager = state.open(trust=state.trust())
        before = manager.store.load().require_signatures
        manager.require_signatures(False, actor=actor or default_actor(), reason=reason, origin=os_account())
        data = {"require_signatures": False, "changed": before}
        line = "the store no longer requires signatures" if before else "the store did not require signatures"
        emit(as_json, data, lambda: echo(line))


@trust.command("status")
@json_option
@click.pass_context
def trust_status(ctx: click.Context, as_json: bool) -> None:
    """Whether the store requires signatures, and who signed each retained version."""
    with managed(ctx) as state:  # reads the store only: no process serves here, so no trust policy is needed
        with contextlib.closing(open_store(state.url, create=False)) as store:
            stored = store.load()
        versions = [
            {"version_id": r.version_id, "state": r.state.value, "signer": (r.signature or {}).get("signer")}
            for r in stored.versions.values()
        ]
        data = {"require_signatures": stored.require_signatures, "versions": versions}

        def human() -> None:
            echo(f"signatures {'required' if stored.require_signatures else 'not required'}")
            for row in versions:
                echo(f"  {row['version_id']}  {row['state']}  {row['signer'] or 'unsigned'}")

        emit(as_json, data, human)
