"""D25: a store can require signatures; every process that loads a bundle from it verifies them.

The requirement is stored with the state (set and cleared by an audited operation); prepare refuses
an unsigned bundle, records the verified signature with the version and the signer in the audit; a
follower refuses a version stored unsigned (written past the CLI), with a tampered signature, or
when it has no trust policy: it stays on what it served, stale, with the reason naming the version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from rule_engine import BundleTrustError, DeploymentManager, DeploymentState, StoreError
from rule_engine.bundle.models import RuleBundle, canonical_json, parse_bundle
from rule_engine.bundle.signing import Ed25519Key, HmacKey, Signature, TrustPolicy, sign_bundle
from rule_engine.control.records import ControlState, VersionRecord
from rule_engine.control.signatures import STORE_SCOPE
from rule_engine.control.strategies import BlueGreen
from rule_engine.errors import DeploymentError
from rule_engine.stores.base import StateStore
from rule_engine.stores.sqlite import SQLiteStore
from tests._support_deployment import mini_bundle

KEY = Ed25519Key.generate("release")
TRUST = TrustPolicy(ed25519={"release": KEY.public_bytes()})


def _bundle(version: str) -> RuleBundle:
    return parse_bundle(json.dumps(mini_bundle(version)))


def _open(path: Path, trust: TrustPolicy | None = TRUST) -> DeploymentManager:
    return DeploymentManager.open(f"sqlite:///{path}", follow=False, trust=trust)


def _deploy_signed(manager: DeploymentManager, version: str) -> str:
    bundle = _bundle(version)
    version_id = manager.prepare_deployment(bundle, signature=sign_bundle(bundle, KEY), deployed_by="alice")
    manager.activate_deployment(version_id, actor="alice")
    return version_id


def _write_past_the_cli(store: StateStore, version: str, signature: dict[str, str] | None = None) -> str:
    """What a process that bypasses prepare does: commit a new active version straight into the store."""
    state = store.load()
    bundle = _bundle(version)
    version_id = f"{bundle.bundle_id}@{version}+rogue.{state.next_seq}"
    record = VersionRecord(
        version_id=version_id,
        seq=state.next_seq,
        bundle_id=bundle.bundle_id,
        bundle_version=version,
        digest=bundle.digest,
        deployed_by="mallory",
        strategy=BlueGreen(),
        state=DeploymentState.ACTIVE,
        created_at=0.0,
        updated_at=0.0,
        activated_at=0.0,
        signature=MappingProxyType(signature) if signature is not None else None,
    )
    old = state.versions[state.active] if state.active else None
    superseded = (replace(old, state=DeploymentState.SUPERSEDED),) if old is not None else ()
    new = replace(
        state,
        versions=MappingProxyType(state.with_versions(*superseded, record)),
        active=version_id,
        lineage=(*state.lineage, version_id),
        next_seq=state.next_seq + 1,
    )
    store.commit(state.revision, new, bundles={version_id: canonical_json(bundle)})
    return version_id


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    with _open(path) as leader:
        _deploy_signed(leader, "1.0.0")
        leader.require_signatures(actor="alice", reason="release policy")
    return path


def test_prepare_records_the_signature_and_the_signer_is_in_the_audit(store_path: Path) -> None:
    """The verified signature is stored with the version (alg, key id, digest, signer) and named in the audit."""
    with _open(store_path) as manager:
        version_id = _deploy_signed(manager, "2.0.0")
        record = manager.store.load().versions[version_id]
        assert record.signature is not None
        assert (record.signature["alg"], record.signature["key_id"], record.signature["signer"]) == (
            "ed25519",
            "release",
            "ed25519:release",
        )
        assert record.signature["digest"] == record.digest
        prepared = [e for e in manager.audit_log() if e.version_id == version_id and e.action == "prepare"]
        assert prepared
        assert prepared[0].reason.endswith("signed by ed25519:release")


def test_the_requirement_is_audited_and_survives_a_restart(store_path: Path) -> None:
    """Turning it on is an audit entry of the store; a new process on the same store finds it on."""
    store = SQLiteStore(store_path)
    try:
        assert store.load().require_signatures is True
        entries = [e for e in store.audit_log() if e.action == "trust"]
        assert [(e.version_id, e.from_state, e.to_state, e.actor) for e in entries] == [
            (STORE_SCOPE, "signatures optional", "signatures required", "alice")
        ]
        assert "ed25519:release" in entries[0].reason
    finally:
        store.close()
    with _open(store_path) as restarted:  # a new process: the stored requirement, not its own settings, refuses
        restarted.configure(trust=None)
        with pytest.raises(BundleTrustError, match="the store requires signed bundles"):
            restarted.prepare_deployment(_bundle("2.0.0"))


def test_prepare_refuses_an_unsigned_bundle_when_required() -> None:
    """Even a process whose trust policy is gone (so it would not check) cannot stage unsigned: nothing is staged."""
    with DeploymentManager(trust=TRUST) as manager:
        _deploy_signed(manager, "1.0.0")
        manager.require_signatures()
        manager.configure(trust=None)
        revision = manager.store.revision()
        with pytest.raises(BundleTrustError, match=r"requires signed bundles.*no trust policy"):
            manager.prepare_deployment(_bundle("2.0.0"))
        manager.configure(trust=TRUST)
        with pytest.raises(BundleTrustError, match="unsigned bundle"):
            manager.prepare_deployment(_bundle("2.0.0"))
        assert manager.store.revision() == revision
        assert len(manager.get_deployment_history()) == 1


def _copied_signature() -> dict[str, str]:
    """A valid signature of another bundle (1.0.0), pasted onto the rogue row."""
    return {**sign_bundle(_bundle("1.0.0"), KEY).to_dict(), "signer": "ed25519:release"}


def _stranger_signature() -> dict[str, str]:
    """A valid signature of the rogue bundle itself, by another key under the trusted key id."""
    stranger = Ed25519Key.generate("release")
    return {**sign_bundle(_bundle("6.6.6"), stranger).to_dict(), "signer": "ed25519:release"}


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        (lambda: None, "stored unsigned"),
        (_copied_signature, "digest mismatch"),
        (_stranger_signature, "bad signature"),
    ],
    ids=["unsigned", "copied-signature", "untrusted-key"],
)
def test_a_follower_refuses_a_version_written_past_the_cli(
    store_path: Path, signature: Callable[[], dict[str, str] | None], why: str
) -> None:
    """The row is committed straight into the store (no prepare): the follower stays on what it served,
    stale, the reason naming the version and why."""
    with _open(store_path) as follower:
        served = follower.get_active_version_id()
        store = SQLiteStore(store_path)
        try:
            rogue = _write_past_the_cli(store, "6.6.6", signature=signature())
        finally:
            store.close()
        follower.refresh()
        assert follower.get_active_version_id() == served
        assert follower.stale is not None
        assert rogue in follower.stale
        assert why in follower.stale


def test_a_process_without_trust_cannot_start_serving_a_store_that_requires_signatures(store_path: Path) -> None:
    """It could not check what it would serve: opening the store is a StoreError naming the version and why."""
    with pytest.raises(StoreError, match=r"version .*1\.0\.0.*no trust policy"):
        _open(store_path, trust=None)


def test_a_running_follower_without_trust_goes_stale_on_a_new_version(tmp_path: Path) -> None:
    """It keeps what it already served; the signed new version is refused (it cannot check it), stale with why."""
    path = tmp_path / "state.db"
    with _open(path) as leader, _open(path, trust=None) as follower:
        _deploy_signed(leader, "1.0.0")
        follower.refresh()
        served = follower.get_active_version_id()
        leader.require_signatures(actor="alice")
        new = _deploy_signed(leader, "2.0.0")
        follower.refresh()
        assert follower.get_active_version_id() == served
        assert follower.stale is not None
        assert new in follower.stale
        assert "no trust policy" in follower.stale


def test_a_follower_with_only_the_public_key_serves_signed_versions(store_path: Path) -> None:
    """Followers need only public keys: the signed new version is verified and served, not stale."""
    with _open(store_path) as leader, _open(store_path, trust=TRUST) as follower:
        new = _deploy_signed(leader, "2.0.0")
        follower.refresh()
        assert follower.get_active_version_id() == new
        assert follower.stale is None


def test_hmac_trust_works_for_followers_holding_the_secret(tmp_path: Path) -> None:
    """With hmac-sha256 every follower holds the shared secret (which can also sign): it verifies the same way."""
    secret = HmacKey("ci", b"k" * 32)
    hmac_trust = TrustPolicy(hmac={"ci": secret.secret})
    path = tmp_path / "state.db"
    with _open(path, hmac_trust) as leader, _open(path, hmac_trust) as follower:
        bundle = _bundle("1.0.0")
        first = leader.prepare_deployment(bundle, signature=sign_bundle(bundle, secret))
        leader.activate_deployment(first)
        leader.require_signatures()
        bundle = _bundle("2.0.0")
        second = leader.prepare_deployment(bundle, signature=sign_bundle(bundle, secret))
        leader.activate_deployment(second)
        follower.refresh()
        assert follower.get_active_version_id() == second
        assert follower.stale is None


def test_requiring_refuses_while_what_serves_is_unsigned(tmp_path: Path) -> None:
    """The active version was deployed unsigned: turning the requirement on is refused, nothing changes."""
    with DeploymentManager(trust=None) as manager:
        manager.activate_deployment(manager.prepare_deployment(_bundle("1.0.0")))
        manager.configure(trust=TRUST)
        revision = manager.store.revision()
        with pytest.raises(DeploymentError, match="what serves is not signed"):
            manager.require_signatures()
        assert manager.store.revision() == revision
        assert manager.store.load().require_signatures is False


def test_unsigned_history_is_refused_or_evicted_on_request() -> None:
    """Unsigned versions that may serve again block the requirement, unless evicted in the same commit."""
    with DeploymentManager() as manager:
        old = manager.prepare_deployment(_bundle("1.0.0"))
        manager.activate_deployment(old)
        manager.configure(trust=TRUST)
        signed = _deploy_signed(manager, "2.0.0")
        with pytest.raises(DeploymentError, match=f"1 retained version.*{re.escape(old)}.*stored unsigned"):
            manager.require_signatures()
        assert manager.require_signatures(evict_unsigned=True) == 1
        assert manager.get_deployment_history() == [signed]
        evictions = [e for e in manager.audit_log() if e.action == "evict"]
        assert [e.version_id for e in evictions] == [old]
        assert "requires signatures" in evictions[0].reason


def test_turning_it_off_is_an_explicit_audited_operation(store_path: Path) -> None:
    """require_signatures(False) clears it, audited; an unsigned bundle can then be staged again."""
    with _open(store_path) as manager:
        manager.configure(trust=None)
        manager.require_signatures(False, actor="bob", reason="key rotation")
        assert manager.store.load().require_signatures is False
        last = manager.audit_log()[-1]
        assert (last.action, last.version_id, last.to_state, last.actor, last.reason) == (
            "trust",
            STORE_SCOPE,
            "signatures optional",
            "bob",
            "key rotation",
        )
        manager.prepare_deployment(_bundle("3.0.0"))


def test_requiring_needs_a_trust_policy() -> None:
    """Nothing to verify the store's versions with: refused, typed."""
    with DeploymentManager() as manager, pytest.raises(BundleTrustError, match="needs a trust policy"):
        manager.require_signatures()


def test_a_damaged_requirement_flag_is_a_store_error(tmp_path: Path) -> None:
    """A flag that is not true/false does not read as "not required": the state is refused."""
    with pytest.raises(ValueError, match="true or false"):
        ControlState.from_dict({**ControlState().to_dict(), "require_signatures": "no"})


def test_signature_records_name_their_signer_consistently() -> None:
    """A stored signer that disagrees with alg and key id is a malformed record."""
    from rule_engine.bundle.signing import signature_from_record, signature_record

    signature: Signature = sign_bundle(_bundle("1.0.0"), KEY)
    record = signature_record(signature)
    assert record["signer"] == "ed25519:release"
    assert signature_from_record(record) == signature
    with pytest.raises(BundleTrustError, match="signer"):
        signature_from_record({**record, "signer": "ed25519:someone-else"})


def test_a_version_of_an_already_compiled_digest_is_still_verified(store_path: Path) -> None:
    """A rogue unsigned row of the same bundle as what serves is refused too (no reuse past the check)."""
    with _open(store_path) as follower:
        served = follower.get_active_version_id()
        store = SQLiteStore(store_path)
        try:
            rogue = _write_past_the_cli(store, "1.0.0", signature=None)  # the digest of what serves
        finally:
            store.close()
        follower.refresh()
        assert follower.get_active_version_id() == served
        assert follower.stale is not None
        assert rogue in follower.stale
        assert "stored unsigned" in follower.stale
