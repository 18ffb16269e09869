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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
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
    "signature_path",
    "verify_bundle",
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
    made by one of these keys over exactly its canonical JSON.
    """

    def __init__(
        self,
        *,
        ed25519: Mapping[str, bytes | Ed25519PublicKey] | None = None,
        hmac: Mapping[str, bytes] | None = None,
    ) -> None:
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

        ``{"ed25519": {key_id: "<base64 public key>"}, "hmac-sha256": {key_id: "<base64 secret>"}}``;
        either section may be left out, but at least one key is needed.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(ALGORITHMS))
        if unknown:
            raise ValueError(f"unknown sections {unknown}; expected {', '.join(repr(a) for a in ALGORITHMS)}")
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
            return cls(ed25519=keys["ed25519"], hmac=keys["hmac-sha256"])
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TrustPolicy:
        """A policy from a JSON trust file (see :meth:`from_dict`); raise ``ValueError`` naming the file and why."""
        where = os.fspath(path)
        try:
            data = json.loads(Path(path).read_bytes())
        except OSError as exc:
            raise ValueError(f"trust file {where!r}: cannot read it: {exc.strerror or exc}") from None
        except (ValueError, RecursionError):
            raise ValueError(f"trust file {where!r}: not JSON") from None
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"trust file {where!r}: {exc}") from None

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


def verify_bundle(bundle: RuleBundle, signature: Signature | None, trust: TrustPolicy) -> None:
    """Raise :class:`BundleTrustError` naming why unless ``signature`` is a trusted signature of ``bundle``.

    The reasons: unsigned, digest mismatch (tampered), unknown key id, bad signature.
    """
    trust.verify(bundle, signature)


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
