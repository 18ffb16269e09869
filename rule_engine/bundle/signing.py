"""Signed bundles: who published a bundle, and that nobody changed it since.

Two algorithms, chosen by the trust model (docs/reliability.md, "Signing and trust"):

- ``ed25519`` (needs the ``rule_engine[signing]`` extra, which installs ``cryptography``): the
  publisher signs with a private key, consumers verify with the public key and cannot sign. Use it
  whenever the machines that serve bundles should not be able to publish them.
- ``hmac-sha256`` (standard library): one shared secret both signs and verifies. Only for setups where
  every holder of the secret is trusted to publish.

A signature covers the bundle's canonical JSON (:func:`rule_engine.bundle.models.canonical_json`, whose
sha256 is ``RuleBundle.digest``), prefixed with a fixed context string so that a signature made for
something else can never pass as a bundle signature::

    message = b"rule_engine bundle signature v1\\n" + canonical_json(bundle).encode("utf-8")

It is stored detached, next to the bundle file as ``BUNDLE.sig`` (``gateway-v1.json`` ->
``gateway-v1.json.sig``), as JSON::

    {"alg": "ed25519", "key_id": "release-2026", "digest": "<sha256 hex>", "signature": "<base64>"}

Because the signature covers canonical JSON, reformatting the file (whitespace, key order) keeps it
valid; changing any value does not.

Trust files (:meth:`TrustPolicy.from_file`) are refused when group or others may write them (whoever
can write the file can make their own key trusted) and, when they hold HMAC secrets (which can
sign), when group or others may read them. The error names the file and the ``chmod`` that fixes it.

A signature says who published a bundle, not that it is the newest: an old signed bundle verifies
as well as a new one. A policy with ``refuse_downgrade`` (:meth:`TrustPolicy.check_downgrade`)
refuses a bundle whose version is not newer than the active version of the same ``bundle_id``
(version order: dotted numbers, then semver pre-release rules; an identical bundle, same digest, is
not a downgrade; a version it cannot order is refused).

For a store whose deployments require signatures, the signature travels with the version:
:func:`signature_record` is the JSON-safe dict stored next to it, and :func:`verify_recorded` checks
a bundle read back from the store against that record on every load.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from rule_engine.bundle.models import RuleBundle, canonical_json
from rule_engine.errors import BundleTrustError, Problem

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SIGNATURE_SUFFIX",
    "Ed25519Key",
    "HmacKey",
    "Signature",
    "TrustPolicy",
    "find_signature",
    "load_signature",
    "sign_bundle",
    "signature_beside",
    "signature_from_record",
    "signature_path",
    "signature_record",
    "verify_bundle",
    "verify_recorded",
    "version_order",
    "write_signature",
]

Algorithm = Literal["ed25519", "hmac-sha256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ed25519", "hmac-sha256")
SIGNATURE_SUFFIX = ".sig"
MIN_HMAC_SECRET_BYTES = 32
_CONTEXT = b"rule_engine bundle signature v1\n"


def _message(bundle: RuleBundle) -> bytes:
    return _CONTEXT + canonical_json(bundle).encode("utf-8")


def _refuse(message: str) -> BundleTrustError:
    return BundleTrustError([Problem("signature", message)])


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "ed25519 signatures need the 'cryptography' package: pip install 'rule_engine[signing]'"
        ) from None
    return ed25519


@dataclass(frozen=True, slots=True)
class Signature:
    """A detached bundle signature: algorithm, key id, the signed bundle's digest, the signature bytes."""

    alg: Algorithm
    key_id: str
    digest: str
    signature: bytes = field(repr=False)

    def to_dict(self) -> dict[str, str]:
        """The JSON form written to ``BUNDLE.sig``."""
        return {
            "alg": self.alg,
            "key_id": self.key_id,
            "digest": self.digest,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    def to_json(self) -> str:
        """The text of a ``BUNDLE.sig`` file."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        """Read the JSON form; raise :class:`BundleTrustError` naming what is wrong with it."""
        if not isinstance(data, Mapping):
            raise _refuse(f"malformed signature: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"alg", "key_id", "digest", "signature"})
        if unknown:
            raise _refuse(f"malformed signature: unknown keys {unknown}")
        for key in ("alg", "key_id", "digest", "signature"):
            if not isinstance(data.get(key), str):
                raise _refuse(f"malformed signature: {key!r} must be a string")
        alg = data["alg"]
        if alg not in ALGORITHMS:
            raise _refuse(f"malformed signature: unsupported alg {alg!r} (supported: {', '.join(ALGORITHMS)})")
        digest = data["digest"]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _refuse("malformed signature: 'digest' must be 64 lowercase hex characters (sha256)")
        try:
            raw = base64.b64decode(data["signature"], validate=True)
        except (binascii.Error, ValueError):
            raise _refuse("malformed signature: 'signature' is not valid base64") from None
        return cls(alg, data["key_id"], digest, raw)


@dataclass(frozen=True, slots=True)
class HmacKey:
    """A shared secret (at least 32 bytes) identified by ``key_id``; signs and verifies."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not self.key_id:
            raise ValueError("key_id must not be empty")
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_HMAC_SECRET_BYTES:
            raise ValueError(f"an HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")

    @classmethod
    def generate(cls, key_id: str) -> HmacKey:
        """A new random 32-byte secret."""
        return cls(key_id, os.urandom(32))

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message``."""
        return hmac.new(self.secret, message, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Ed25519Key:
    """An Ed25519 private key identified by ``key_id`` (the publisher's side)."""

    key_id: str
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, key_id: str) -> Ed25519Key:
        """A new random key pair."""
        return cls(key_id, _crypto().Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, key_id: str, raw: bytes) -> Ed25519Key:
        """The key from its 32 raw private bytes."""
        return cls(key_id, _crypto().Ed25519PrivateKey.from_private_bytes(raw))

    def public_bytes(self) -> bytes:
        """The 32 raw bytes of the public key (what consumers put in their :class:`TrustPolicy`)."""
        from cryptography.hazmat.primitives import serialization

        raw: bytes = self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return raw


SigningKey = HmacKey | Ed25519Key


def sign_bundle(bundle: RuleBundle, key: SigningKey) -> Signature:
    """Sign the bundle's canonical JSON with ``key``."""
    message = _message(bundle)
    if isinstance(key, HmacKey):
        return Signature("hmac-sha256", key.key_id, bundle.digest, key.mac(message))
    if isinstance(key, Ed25519Key):
        return Signature("ed25519", key.key_id, bundle.digest, key.private_key.sign(message))
    raise TypeError(f"expected an HmacKey or an Ed25519Key, got {type(key).__name__}")


class TrustPolicy:
    """Which signers a consumer trusts: Ed25519 public keys and/or HMAC secrets, by key id.

    ``ed25519`` maps key ids to public keys (32 raw bytes or ``Ed25519PublicKey`` objects); ``hmac``
    maps key ids to shared secrets (bytes, at least 32). A bundle is accepted only with a signature
    made by one of these keys over exactly its canonical JSON. With ``refuse_downgrade``,
    :meth:`check_downgrade` also refuses a bundle that is not newer than the active one.
    """

    def __init__(
        self,
        *,
        ed25519: Mapping[str, bytes | Ed25519PublicKey] | None = None,
        hmac: Mapping[str, bytes] | None = None,
        refuse_downgrade: bool = False,
    ) -> None:
        self.refuse_downgrade = refuse_downgrade
        public: dict[str, Ed25519PublicKey] = {}
        for key_id, key in (ed25519 or {}).items():
            public[key_id] = _crypto().Ed25519PublicKey.from_public_bytes(key) if isinstance(key, bytes) else key
        self._ed25519: Mapping[str, Ed25519PublicKey] = MappingProxyType(public)
        self._hmac: Mapping[str, HmacKey] = MappingProxyType(
            {key_id: HmacKey(key_id, secret) for key_id, secret in (hmac or {}).items()}
        )
        if not self._ed25519 and not self._hmac:
            raise ValueError("a TrustPolicy needs at least one trusted key")

    @classmethod
    def from_dict(cls, data: Any) -> TrustPolicy:
        """A policy from the trust-file JSON form; raise ``ValueError`` naming what is wrong.

        ``{"ed25519": {key_id: "<base64 public key>"}, "hmac-sha256": {key_id: "<base64 secret>"},
        "refuse_downgrade": true}``; either key section may be left out, but at least one key is
        needed; ``refuse_downgrade`` (default false) turns on :meth:`check_downgrade`.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(ALGORITHMS) - {"refuse_downgrade"})
        if unknown:
            raise ValueError(f"unknown sections {unknown}; expected {', '.join(repr(a) for a in ALGORITHMS)}")
        refuse_downgrade = data.get("refuse_downgrade", False)
        if not isinstance(refuse_downgrade, bool):
            raise ValueError(f"'refuse_downgrade' must be true or false, got {refuse_downgrade!r}")
        keys: dict[str, dict[str, bytes]] = {}
        for alg in ALGORITHMS:
            section = data.get(alg, {})
            if not isinstance(section, Mapping):
                raise ValueError(f"{alg!r} must map key ids to base64 keys, got {type(section).__name__}")
            keys[alg] = {}
            for key_id, text in section.items():
                if not key_id or not isinstance(text, str):
                    raise ValueError(f"{alg}.{key_id!r}: expected a non-empty key id and a base64 string")
                try:
                    keys[alg][key_id] = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    raise ValueError(f"{alg}.{key_id!r}: not valid base64") from None
                size = len(keys[alg][key_id])
                if alg == "ed25519" and size != 32:
                    raise ValueError(f"ed25519.{key_id!r}: a public key is 32 bytes, got {size}")
                if alg == "hmac-sha256" and size < MIN_HMAC_SECRET_BYTES:
                    raise ValueError(
                        f"hmac-sha256.{key_id!r}: a secret is at least {MIN_HMAC_SECRET_BYTES} bytes, got {size}"
                    )
        try:
            return cls(ed25519=keys["ed25519"], hmac=keys["hmac-sha256"], refuse_downgrade=refuse_downgrade)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustPolicy:
        """A policy from a JSON trust file (see :meth:`from_dict`); raise ``ValueError`` naming the file and why.

        On POSIX systems the file is refused when group or others may write it, and, when it holds
        HMAC secrets, when group or others may read it; the message gives the ``chmod`` that fixes it.
        """
        where = os.fspath(path)
        try:
            with open(path, "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                text = handle.read()
        except OSError as exc:
            raise ValueError(f"trust file {where!r}: cannot read it: {exc.strerror or exc}") from None
        if os.name == "posix" and mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ValueError(
                f"trust file {where!r}: writable by group or others (mode {stat.S_IMODE(mode):04o}), so anyone "
                f"who can write it can make their own key trusted; fix it with: chmod go-w {where}"
            )
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError(f"trust file {where!r}: not JSON") from None
        try:
            policy = cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"trust file {where!r}: {exc}") from None
        if os.name == "posix" and policy._hmac and mode & (stat.S_IRGRP | stat.S_IROTH):
            raise ValueError(
                f"trust file {where!r}: holds HMAC secrets (which can sign bundles) and is readable by group "
                f"or others (mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {where}"
            )
        return policy

    def with_downgrade_refused(self) -> TrustPolicy:
        """The same keys, with ``refuse_downgrade`` on."""
        policy = copy.copy(self)
        policy.refuse_downgrade = True
        return policy

    def check_downgrade(self, bundle: RuleBundle, active: RuleBundle | None) -> None:
        """With ``refuse_downgrade``: raise :class:`BundleTrustError` unless ``bundle`` is newer than ``active``.

        ``active`` is the bundle of the version serving all traffic (the stable one during a
        rollout). Only bundles with the same ``bundle_id`` are compared; the identical bundle (same
        digest) passes; a version :func:`version_order` cannot order is refused.
        """
        if not self.refuse_downgrade or active is None or active.bundle_id != bundle.bundle_id:
            return
        if hmac.compare_digest(bundle.digest, active.digest):
            return
        new, old = version_order(bundle.version), version_order(active.version)
        name = bundle.bundle_id
        if new is None or old is None:
            raise _refuse(
                f"downgrade check: cannot order versions {bundle.version!r} and {active.version!r} of {name} "
                "(refuse_downgrade compares versions like 1.2.3 or 1.2.3-rc.1)"
            )
        if new <= old:
            raise _refuse(
                f"downgrade refused: {name}@{bundle.version} is not newer than the active {name}@{active.version} "
                "(the trust policy refuses downgrades)"
            )

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The trusted key ids (``alg:key_id``), sorted."""
        return tuple(sorted([f"ed25519:{k}" for k in self._ed25519] + [f"hmac-sha256:{k}" for k in self._hmac]))

    def verify(self, bundle: RuleBundle, signature: Signature | None) -> None:
        """Raise :class:`BundleTrustError` naming why unless ``signature`` is a trusted signature of ``bundle``."""
        if signature is None:
            raise _refuse(
                f"unsigned bundle {bundle.bundle_id}@{bundle.version}: a trust policy is configured, "
                "so every bundle needs a signature (BUNDLE.sig)"
            )
        if not hmac.compare_digest(signature.digest, bundle.digest):
            raise _refuse(
                f"digest mismatch: the signature is for bundle digest {signature.digest[:12]}..., "
                f"this bundle's digest is {bundle.digest[:12]}... (the bundle was changed after signing)"
            )
        message = _message(bundle)
        if signature.alg == "hmac-sha256":
            secret = self._hmac.get(signature.key_id)
            if secret is None:
                raise self._unknown(signature)
            if not hmac.compare_digest(secret.mac(message), signature.signature):
                raise _refuse(f"bad signature: hmac-sha256 key {signature.key_id!r} did not make this signature")
            return
        if signature.alg == "ed25519":
            public = self._ed25519.get(signature.key_id)
            if public is None:
                raise self._unknown(signature)
            from cryptography.exceptions import InvalidSignature

            try:
                public.verify(signature.signature, message)
            except InvalidSignature:
                raise _refuse(f"bad signature: ed25519 key {signature.key_id!r} did not make this signature") from None
            return
        raise _refuse(f"unsupported signature algorithm {signature.alg!r}")  # pragma: no cover - Literal

    def _unknown(self, signature: Signature) -> BundleTrustError:
        trusted = ", ".join(self.key_ids)
        return _refuse(f"unknown key id {signature.alg}:{signature.key_id!r}; trusted keys: {trusted}")


_VERSION = re.compile(r"(?P<release>[0-9]+(?:\.[0-9]+)*)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def version_order(version: str) -> tuple[Any, ...] | None:
    """A sort key for a bundle version (``1.2.3``, ``2.0``, ``1.0.0-rc.1``, ``1.0.0+build``), or None.

    Release numbers compare numerically (trailing zeros ignored: ``2.0 == 2.0.0``); a pre-release
    sorts before its release, its identifiers compared as semver does (numbers numerically and
    before words); build metadata after ``+`` is ignored. Anything else cannot be ordered.
    """
    match = _VERSION.fullmatch(version)
    if match is None:
        return None
    release = [int(part) for part in match["release"].split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    pre = match["pre"]
    if pre is None:
        return (tuple(release), 1, ())
    ids = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split("."))
    return (tuple(release), 0, ids)


def verify_bundle(bundle: RuleBundle, signature: Signature | None, trust: TrustPolicy) -> None:
    """Raise :class:`BundleTrustError` naming why unless ``signature`` is a trusted signature of ``bundle``.

    The reasons: unsigned, digest mismatch (tampered), unknown key id, bad signature.
    """
    trust.verify(bundle, signature)


def signature_record(signature: Signature) -> dict[str, str]:
    """The JSON-safe dict stored with the version it signs: the signature and its ``signer`` (``alg:key_id``)."""
    return {**signature.to_dict(), "signer": f"{signature.alg}:{signature.key_id}"}


def signature_from_record(record: Any) -> Signature | None:
    """The signature stored with a version (None when none was stored); :class:`BundleTrustError` if malformed."""
    if isinstance(record, Mapping) and "signer" in record:  # derived from alg and key_id: it must agree with them
        if record["signer"] != f"{record.get('alg')}:{record.get('key_id')}":
            raise _refuse("malformed signature: 'signer' does not name its alg and key_id")
        record = {k: v for k, v in record.items() if k != "signer"}
    return None if record is None else Signature.from_dict(record)


def verify_recorded(
    bundle: RuleBundle, record: Any, trust: TrustPolicy | None, *, version_id: str | None = None
) -> Signature:
    """Check a bundle loaded from a store whose deployments require signatures; return its signature.

    ``record`` is what :func:`signature_record` stored with the version (None when nothing was).
    Raise :class:`BundleTrustError` naming the version when this process has no trust policy, when
    the version was stored without a signature, or when the signature does not verify for exactly
    this bundle (changed in the store, or signed by a key this process does not trust).
    """
    name = version_id or f"{bundle.bundle_id}@{bundle.version}"
    if trust is None:
        raise _refuse(
            f"version {name}: the store requires signed bundles, but this process has no trust policy to check them"
        )
    signature = signature_from_record(record)
    if signature is None:
        raise _refuse(f"version {name}: the store requires signed bundles, but this version was stored unsigned")
    try:
        trust.verify(bundle, signature)
    except BundleTrustError as exc:
        raise _refuse(f"version {name}: {exc.problems[0].message if exc.problems else exc}") from None
    return signature


def signature_path(bundle_path: str | os.PathLike[str]) -> Path:
    """Where a bundle file's detached signature lives: the same path with ``.sig`` appended."""
    path = Path(bundle_path)
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def load_signature(path: str | os.PathLike[str]) -> Signature:
    """Read a ``BUNDLE.sig`` file; raise :class:`BundleTrustError` if it is unreadable or malformed."""
    try:
        text = Path(path).read_bytes()
        data = json.loads(text)
    except OSError as exc:
        raise _refuse(f"cannot read signature file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise _refuse(f"malformed signature file {os.fspath(path)!r}: not JSON") from None
    return Signature.from_dict(data)


def find_signature(bundle_path: str | os.PathLike[str]) -> Signature | None:
    """The signature stored next to a bundle file (``BUNDLE.sig``), or None when there is none."""
    path = signature_path(bundle_path)
    return load_signature(path) if path.exists() else None


def signature_beside(source: object) -> Signature | None:
    """The ``BUNDLE.sig`` next to ``source`` when it is a bundle file path; None otherwise or when absent."""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        try:
            return find_signature(source)
        except OSError:  # pragma: no cover - an unusable path: treated as unsigned
            return None
    return None


def write_signature(signature: Signature, bundle_path: str | os.PathLike[str]) -> Path:
    """Write ``signature`` next to the bundle file as ``BUNDLE.sig``; return its path."""
    path = signature_path(bundle_path)
    path.write_text(signature.to_json(), encoding="utf-8")
    return path
