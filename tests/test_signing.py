"""Signed bundles: sign and verify with Ed25519 and HMAC-SHA256; a manager with a trust policy refuses the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rule_engine import BlueGreen, BundleTrustError, DeploymentManager, load_bundle, parse_bundle
from rule_engine.bundle.models import RuleBundle, canonical_json
from rule_engine.bundle.signing import (
    Ed25519Key,
    HmacKey,
    Signature,
    TrustPolicy,
    find_signature,
    load_signature,
    sign_bundle,
    signature_path,
    verify_bundle,
    write_signature,
)

BUNDLES = Path(__file__).resolve().parent.parent / "bundles"
SECRET = b"s" * 32


@pytest.fixture(scope="module")
def bundle() -> RuleBundle:
    return load_bundle(BUNDLES / "gateway-v1.json")


@pytest.fixture(scope="module")
def ed_key() -> Ed25519Key:
    return Ed25519Key.generate("release-1")


def _tampered(bundle: RuleBundle) -> RuleBundle:
    """The same bundle with one rule's decision changed."""
    data = json.loads(canonical_json(bundle))
    data["rules"][0]["then"]["decision"] = "deny" if data["rules"][0]["then"]["decision"] != "deny" else "allow"
    data["tests"] = []
    return parse_bundle(json.dumps(data))


def _reason(exc: pytest.ExceptionInfo[BundleTrustError]) -> str:
    return exc.value.problems[0].message


def test_ed25519_signature_verifies_with_the_public_key(bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """An Ed25519 signature verifies against a policy holding only the public key."""
    signature = sign_bundle(bundle, ed_key)
    assert (signature.alg, signature.key_id, signature.digest) == ("ed25519", "release-1", bundle.digest)
    verify_bundle(bundle, signature, TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}))


def test_hmac_signature_verifies_with_the_shared_secret(bundle: RuleBundle) -> None:
    """An HMAC-SHA256 signature verifies against a policy holding the same secret."""
    signature = sign_bundle(bundle, HmacKey("ci", SECRET))
    assert signature.alg == "hmac-sha256"
    verify_bundle(bundle, signature, TrustPolicy(hmac={"ci": SECRET}))


def test_signature_survives_reformatting_the_bundle(bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """Whitespace and key order do not matter: the signature covers the canonical JSON."""
    signature = sign_bundle(bundle, ed_key)
    data = json.loads(canonical_json(bundle))
    reformatted = parse_bundle(json.dumps(dict(reversed(data.items())), indent=7))
    verify_bundle(reformatted, signature, TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}))


@pytest.mark.parametrize("alg", ["ed25519", "hmac-sha256"])
def test_tampered_bundle_is_refused_as_digest_mismatch(bundle: RuleBundle, ed_key: Ed25519Key, alg: str) -> None:
    """A bundle with one rule changed after signing is refused, naming the digest mismatch."""
    key = ed_key if alg == "ed25519" else HmacKey("ci", SECRET)
    trust = TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}, hmac={"ci": SECRET})
    signature = sign_bundle(bundle, key)
    with pytest.raises(BundleTrustError) as exc:
        verify_bundle(_tampered(bundle), signature, trust)
    assert _reason(exc).startswith("digest mismatch")


@pytest.mark.parametrize("alg", ["ed25519", "hmac-sha256"])
def test_tampered_bundle_with_forged_digest_is_refused_as_bad_signature(
    bundle: RuleBundle, ed_key: Ed25519Key, alg: str
) -> None:
    """Rewriting the signature's digest to the tampered bundle's does not help: the signature fails."""
    key = ed_key if alg == "ed25519" else HmacKey("ci", SECRET)
    trust = TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}, hmac={"ci": SECRET})
    tampered = _tampered(bundle)
    original = sign_bundle(bundle, key)
    forged = Signature(original.alg, original.key_id, tampered.digest, original.signature)
    with pytest.raises(BundleTrustError) as exc:
        verify_bundle(tampered, forged, trust)
    assert _reason(exc).startswith("bad signature")


def test_wrong_key_with_a_trusted_id_is_refused(bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """A signature by another key under a trusted key id is a bad signature (both algorithms)."""
    impostor = Ed25519Key.generate("release-1")
    trust = TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}, hmac={"ci": SECRET})
    with pytest.raises(BundleTrustError) as exc:
        verify_bundle(bundle, sign_bundle(bundle, impostor), trust)
    assert _reason(exc).startswith("bad signature")
    with pytest.raises(BundleTrustError) as exc:
        verify_bundle(bundle, sign_bundle(bundle, HmacKey("ci", b"x" * 32)), trust)
    assert _reason(exc).startswith("bad signature")


def test_unknown_key_id_is_refused_and_named(bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """A signature by a key id the policy does not hold is refused, naming the id and the trusted ones."""
    trust = TrustPolicy(ed25519={"release-1": ed_key.public_bytes()})
    with pytest.raises(BundleTrustError) as exc:
        verify_bundle(bundle, sign_bundle(bundle, Ed25519Key.generate("rogue")), trust)
    assert _reason(exc).startswith("unknown key id ed25519:'rogue'")
    assert "ed25519:release-1" in _reason(exc)
    with pytest.raises(BundleTrustError) as exc:  # an HMAC id is not an Ed25519 id
        verify_bundle(bundle, sign_bundle(bundle, HmacKey("release-1", SECRET)), trust)
    assert _reason(exc).startswith("unknown key id hmac-sha256:'release-1'")


def test_unsigned_bundle_is_refused(bundle: RuleBundle) -> None:
    """No signature at all is refused as unsigned."""
    with pytest.raises(BundleTrustError) as exc:
        verify_bundle(bundle, None, TrustPolicy(hmac={"ci": SECRET}))
    assert _reason(exc).startswith("unsigned bundle gateway-access@1.0.0")


def test_short_hmac_secret_is_refused() -> None:
    """HMAC secrets shorter than 32 bytes are refused when building keys and policies."""
    with pytest.raises(ValueError, match="at least 32 bytes"):
        HmacKey("ci", b"short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TrustPolicy(hmac={"ci": b"short"})


def test_signature_file_round_trips_next_to_the_bundle(tmp_path: Path, bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """write_signature puts BUNDLE.sig next to the file; find_signature / load_signature read it back."""
    bundle_file = tmp_path / "gateway-v1.json"
    bundle_file.write_text(canonical_json(bundle), encoding="utf-8")
    assert find_signature(bundle_file) is None
    signature = sign_bundle(bundle, ed_key)
    path = write_signature(signature, bundle_file)
    assert path == signature_path(bundle_file) == tmp_path / "gateway-v1.json.sig"
    assert set(json.loads(path.read_text())) == {"alg", "key_id", "digest", "signature"}
    assert load_signature(path) == signature == find_signature(bundle_file)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"alg": "rsa", "key_id": "k", "digest": "' + "0" * 64 + '", "signature": "AA=="}', "unsupported alg"),
        ('{"alg": "ed25519", "key_id": "k", "digest": "xyz", "signature": "AA=="}', "64 lowercase hex"),
        ('{"alg": "ed25519", "key_id": "k", "digest": "' + "0" * 64 + '", "signature": "***"}', "base64"),
        ('{"alg": "ed25519", "key_id": 1, "digest": "' + "0" * 64 + '", "signature": "AA=="}', "'key_id'"),
    ],
)
def test_malformed_signature_file_is_refused(tmp_path: Path, text: str, why: str) -> None:
    """A malformed BUNDLE.sig raises BundleTrustError naming what is wrong."""
    path = tmp_path / "b.json.sig"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BundleTrustError, match=why):
        load_signature(path)


# --- the manager --------------------------------------------------------------------------------------


def test_manager_without_trust_accepts_unsigned_bundles(bundle: RuleBundle) -> None:
    """Without a trust policy, unsigned bundles deploy as before."""
    manager = DeploymentManager()
    version = manager.prepare_deployment(bundle)
    assert manager.get_deployment_history() == [version]


def test_manager_with_trust_accepts_a_trusted_signature(bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """With a trust policy, a bundle with a trusted signature is prepared and activates."""
    manager = DeploymentManager(trust=TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}))
    version = manager.prepare_deployment(bundle, BlueGreen(), signature=sign_bundle(bundle, ed_key))
    manager.activate_deployment(version)
    assert manager.get_active_version_id() == version


def test_manager_finds_the_signature_next_to_a_bundle_file(
    tmp_path: Path, bundle: RuleBundle, ed_key: Ed25519Key
) -> None:
    """Preparing from a file path uses the BUNDLE.sig beside it; without one the file is refused."""
    manager = DeploymentManager(trust=TrustPolicy(ed25519={"release-1": ed_key.public_bytes()}))
    bundle_file = tmp_path / "gateway-v1.json"
    bundle_file.write_text(canonical_json(bundle), encoding="utf-8")
    with pytest.raises(BundleTrustError, match="unsigned bundle"):
        manager.prepare_deployment(bundle_file)
    write_signature(sign_bundle(bundle, ed_key), bundle_file)
    assert manager.prepare_deployment(bundle_file) in manager.get_deployment_history()
    assert manager.prepare_deployment(str(bundle_file)) in manager.get_deployment_history()


@pytest.mark.parametrize("case", ["unsigned", "tampered", "wrong-key", "unknown-key"])
def test_manager_never_stages_a_refused_bundle(
    bundle: RuleBundle, ed_key: Ed25519Key, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused bundle leaves history, audit log and serving untouched, and its tests never run."""
    trust = TrustPolicy(ed25519={"release-1": ed_key.public_bytes()})
    manager = DeploymentManager(trust=trust)
    first = manager.prepare_deployment(bundle, signature=sign_bundle(bundle, ed_key))
    manager.activate_deployment(first)
    history, audit, revision = manager.get_deployment_history(), manager.audit_log(), manager.store.revision()

    import rule_engine.deployment.intake as manager_module

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("bundle tests ran before the trust check")

    monkeypatch.setattr(manager_module, "run_bundle_tests", must_not_run)
    candidate = _tampered(bundle)
    signature = {
        "unsigned": None,
        "tampered": sign_bundle(bundle, ed_key),
        "wrong-key": sign_bundle(candidate, Ed25519Key.generate("release-1")),
        "unknown-key": sign_bundle(candidate, Ed25519Key.generate("other")),
    }[case]
    with pytest.raises(BundleTrustError):
        manager.prepare_deployment(candidate, signature=signature)
    assert manager.get_deployment_history() == history
    assert manager.audit_log() == audit
    assert manager.store.revision() == revision
    assert manager.get_active_version_id() == first
