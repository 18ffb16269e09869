"""Signed bundles: sign and verify with Ed25519 and HMAC-SHA256; a manager with a trust policy refuses the rest."""

from __future__ import annotations

import base64
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
    signature_from_record,
    signature_path,
    signature_record,
    verify_bundle,
    verify_recorded,
    version_order,
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


# --- trust file permissions (D23) ---------------------------------------------------------------------


def _trust_file(tmp_path: Path, data: dict[str, object], mode: int) -> Path:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o622])
def test_a_trust_file_others_may_write_is_refused(tmp_path: Path, ed_key: Ed25519Key, mode: int) -> None:
    """A group- or world-writable trust file is refused, naming the file and the chmod that fixes it."""
    public = base64.b64encode(ed_key.public_bytes()).decode()
    path = _trust_file(tmp_path, {"ed25519": {"release-1": public}}, mode)
    with pytest.raises(ValueError, match="writable by group or others") as exc:
        TrustPolicy.from_file(path)
    assert str(path) in str(exc.value)
    assert f"chmod go-w {path}" in str(exc.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_hmac_secrets_readable_by_others_are_refused(tmp_path: Path, mode: int) -> None:
    """A trust file holding HMAC secrets (which can sign) is refused when group or others may read it."""
    path = _trust_file(tmp_path, {"hmac-sha256": {"ci": base64.b64encode(SECRET).decode()}}, mode)
    with pytest.raises(ValueError, match="holds HMAC secrets") as exc:
        TrustPolicy.from_file(path)
    assert f"chmod 600 {path}" in str(exc.value)


def test_private_trust_files_and_public_keys_readable_by_all_are_accepted(tmp_path: Path, ed_key: Ed25519Key) -> None:
    """0600 with secrets, and 0644 with only public keys, load (public keys are not secret)."""
    secret = _trust_file(tmp_path, {"hmac-sha256": {"ci": base64.b64encode(SECRET).decode()}}, 0o600)
    assert TrustPolicy.from_file(secret).key_ids == ("hmac-sha256:ci",)
    public = base64.b64encode(ed_key.public_bytes()).decode()
    readable = _trust_file(tmp_path, {"ed25519": {"release-1": public}}, 0o644)
    assert TrustPolicy.from_file(readable).key_ids == ("ed25519:release-1",)


# --- downgrades (D24) ---------------------------------------------------------------------------------


def _version(bundle: RuleBundle, version: str) -> RuleBundle:
    data = json.loads(canonical_json(bundle))
    data["version"] = version
    return parse_bundle(json.dumps(data))


def test_an_older_signed_bundle_still_verifies_unless_downgrades_are_refused(bundle: RuleBundle) -> None:
    """By default a signature says who, not how new; with refuse_downgrade an older version is refused."""
    key = HmacKey("ci", SECRET)
    old, new = _version(bundle, "1.0.0"), _version(bundle, "1.2.0")
    lenient = TrustPolicy(hmac={"ci": SECRET})
    lenient.verify(old, sign_bundle(old, key))
    lenient.check_downgrade(old, new)  # documented: allowed unless asked
    strict = TrustPolicy(hmac={"ci": SECRET}, refuse_downgrade=True)
    strict.verify(old, sign_bundle(old, key))
    with pytest.raises(BundleTrustError) as exc:
        strict.check_downgrade(old, new)
    for fragment in ("downgrade refused", "1.0.0", "1.2.0"):
        assert fragment in _reason(exc)
    strict.check_downgrade(new, old)  # an upgrade
    strict.check_downgrade(new, new)  # the identical bundle again
    strict.check_downgrade(old, None)  # nothing active yet
    other = json.loads(canonical_json(new))
    other["bundle_id"] = "another-policy"
    strict.check_downgrade(old, parse_bundle(json.dumps(other)))  # another bundle id: not comparable


def test_the_same_version_with_other_content_is_not_an_upgrade(bundle: RuleBundle) -> None:
    """refuse_downgrade refuses a bundle that reuses the active version number with different rules."""
    strict = TrustPolicy(hmac={"ci": SECRET}, refuse_downgrade=True)
    changed = _tampered(bundle)
    with pytest.raises(BundleTrustError, match="not newer"):
        strict.check_downgrade(changed, bundle)


def test_versions_it_cannot_order_are_refused_when_downgrades_are_refused(bundle: RuleBundle) -> None:
    """A version like 'blue' cannot be ordered: refused (fail closed), saying which versions."""
    strict = TrustPolicy(hmac={"ci": SECRET}, refuse_downgrade=True)
    with pytest.raises(BundleTrustError, match="cannot order versions 'blue'"):
        strict.check_downgrade(_version(bundle, "blue"), bundle)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("2", "2.0.1"),
    ],
)
def test_version_order_follows_semver(lower: str, higher: str) -> None:
    """Release numbers compare numerically; a pre-release sorts before its release (semver precedence)."""
    low, high = version_order(lower), version_order(higher)
    assert low is not None
    assert high is not None
    assert low < high


def test_version_order_ignores_build_metadata_and_trailing_zeros() -> None:
    """2.0 == 2.0.0 == 2.0.0+build.7; text that is not a version has no order."""
    assert version_order("2.0") == version_order("2.0.0") == version_order("2.0.0+build.7")
    assert version_order("blue") is None
    assert version_order("1..2") is None


def test_a_trust_file_can_turn_downgrade_refusal_on(tmp_path: Path) -> None:
    """'refuse_downgrade': true in the trust file sets the policy's option; anything but a bool is refused."""
    secret = base64.b64encode(SECRET).decode()
    path = _trust_file(tmp_path, {"hmac-sha256": {"ci": secret}, "refuse_downgrade": True}, 0o600)
    assert TrustPolicy.from_file(path).refuse_downgrade is True
    assert TrustPolicy.from_dict({"hmac-sha256": {"ci": secret}}).refuse_downgrade is False
    with pytest.raises(ValueError, match="'refuse_downgrade' must be true or false"):
        TrustPolicy.from_dict({"hmac-sha256": {"ci": secret}, "refuse_downgrade": "yes"})


# --- signatures recorded in a store (D25) ---------------------------------------------------------------


def test_a_signature_record_round_trips_through_json(bundle: RuleBundle, ed_key: Ed25519Key) -> None:
    """signature_record is plain JSON; signature_from_record gives the same signature back (None for none)."""
    signature = sign_bundle(bundle, ed_key)
    record = json.loads(json.dumps(signature_record(signature)))
    assert signature_from_record(record) == signature
    assert signature_from_record(None) is None
    with pytest.raises(BundleTrustError, match="malformed signature"):
        signature_from_record({"alg": "ed25519"})


def test_verify_recorded_accepts_the_signed_bundle_and_names_the_version_otherwise(
    bundle: RuleBundle, ed_key: Ed25519Key
) -> None:
    """On load: the recorded signature must verify for exactly this bundle, with this process's trust."""
    trust = TrustPolicy(ed25519={"release-1": ed_key.public_bytes()})
    record = signature_record(sign_bundle(bundle, ed_key))
    assert verify_recorded(bundle, record, trust, version_id="v-1").key_id == "release-1"
    cases = [
        (_tampered(bundle), record, trust, "digest mismatch"),  # the stored bundle row was changed
        (bundle, None, trust, "stored unsigned"),
        (bundle, record, None, "no trust policy"),
        (bundle, record, TrustPolicy(hmac={"ci": SECRET}), "unknown key id"),
    ]
    for loaded, recorded, policy, why in cases:
        with pytest.raises(BundleTrustError) as exc:
            verify_recorded(loaded, recorded, policy, version_id="v-1")
        assert _reason(exc).startswith("version v-1: "), why
        assert why in _reason(exc), why
