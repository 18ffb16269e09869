"""Signed versions in a store (D25): the requirement, what a version records, the check on every load.

Pure (no I/O). A store's :class:`ControlState` says whether its deployments require signatures
(``require_signatures``); it is set and cleared only by :func:`require`, an audited operation. While
it is set:

- ``prepare`` refuses a bundle without a signature this process's trust policy verified
  (:func:`check_prepare`; nothing is staged), and records the verified signature with the version
  (``VersionRecord.signature``: alg, key id, signed digest, signature, signer) and the signer in the
  audit entry;
- every process that loads a version's bundle from the store to serve it verifies the recorded
  signature against its own trust policy (:func:`check_loaded`); a version stored unsigned (written
  past the CLI), with a signature that does not verify, or loaded by a process without a trust
  policy is a :class:`StoreError` naming the version: a follower stays on what it served, stale,
  with that reason.

See docs/reliability.md, "Signatures in the store".
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from types import MappingProxyType

from rule_engine.bundle.models import RuleBundle
from rule_engine.bundle.signing import Signature, TrustPolicy, signature_record, verify_recorded
from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.transitions import Change
from rule_engine.errors import BundleTrustError, DeploymentError, Problem, StoreError

__all__ = ["MAY_SERVE_AGAIN", "STORE_SCOPE", "check_loaded", "check_prepare", "recorded", "require", "signer_of"]

S = DeploymentState

#: The audit entries of a store-wide setting carry this in place of a version id.
STORE_SCOPE = "(store)"
#: Retained versions that can take traffic again (activate, undo, rollback, retry): under the
#: requirement, each must carry a signature that verifies.
MAY_SERVE_AGAIN = frozenset({S.STAGED, S.ROLLING_OUT, S.ACTIVE, S.SUPERSEDED, S.ABORTED})


def recorded(signature: Signature | None) -> Mapping[str, str] | None:
    """What a version stores of the signature its preparing process verified (None: unsigned)."""
    return MappingProxyType(signature_record(signature)) if signature is not None else None


def signer_of(record: VersionRecord) -> str | None:
    """Who signed a version (``alg:key_id`` of the trusted key that verified it), or None."""
    return record.signature.get("signer") if record.signature is not None else None


def check_prepare(state: ControlState, record: VersionRecord, has_trust: bool) -> None:
    """Refuse (:class:`BundleTrustError`) staging ``record`` unsigned in a store that requires signatures."""
    if not state.require_signatures or record.signature is not None:
        return
    name = f"{record.bundle_id}@{record.bundle_version}"
    why = (
        "this process has no trust policy to verify its signature (give it --trust FILE)"
        if not has_trust
        else "it has no signature (BUNDLE.sig)"
    )
    raise BundleTrustError([Problem("signature", f"refusing {name}: the store requires signed bundles, and {why}")])


def check_loaded(state: ControlState, record: VersionRecord, bundle: RuleBundle, trust: TrustPolicy | None) -> None:
    """When ``state`` requires signatures, raise :class:`StoreError` unless ``record``'s signature verifies.

    Called for every bundle a process loads from the store to serve; the message names the version
    and why (no trust policy here, stored unsigned, changed, or signed by an untrusted key).
    """
    if not state.require_signatures:
        return
    try:
        verify_recorded(bundle, record.signature, trust, version_id=record.version_id)
    except BundleTrustError as exc:
        detail = exc.problems[0].message if exc.problems else str(exc)
        raise StoreError(f"refusing to serve from the store: {detail}") from None


def require(
    state: ControlState,
    now: float,
    actor: str,
    *,
    required: bool,
    verified: Mapping[str, Mapping[str, str]],
    refused: Mapping[str, str],
    trusted: Collection[str] = (),
    evict_unsigned: bool = False,
    reason: str = "",
    max_history: int = 10,
) -> Change:
    """Turn the store's signature requirement on (``required``) or off; a no-op when it already is so.

    ``verified`` maps each version whose recorded signature the caller verified (with the trust
    policy whose keys are ``trusted``) to that record; ``refused`` says why the others did not.
    Turning it on is refused while what serves (the active version, a rollout's two) is not
    verified, and while other retained versions that may serve again are not, unless
    ``evict_unsigned`` takes those out of history in the same commit. The result is the number of
    versions verified. ``max_history`` is accepted like every operation's; nothing is evicted for it.
    """
    change = Change(state, "trust", actor, result=0)
    if state.require_signatures is required:
        return change
    if required:
        victims = _unverified(state, verified, refused, evict_unsigned)
        for victim in victims:
            record = state.versions[victim]
            change.audit_as(
                "evict", record, "evicted", now, "not signed by a trusted key: the store requires signatures"
            )
            change.event("history.evicted", version_id=victim, state=record.state.value, reason="unsigned")
        versions = state.with_versions(drop=victims)
        lineage = tuple(v for v in state.lineage if v not in victims)
        change.state = replace(state, versions=MappingProxyType(versions), lineage=lineage)
        change.evicted = victims
        change.result = len(verified)
    was, to = (
        ("signatures optional", "signatures required") if required else ("signatures required", "signatures optional")
    )
    if required:
        why = f"{reason or 'every process verifies each bundle it loads'} (trusted keys: {', '.join(sorted(trusted))})"
    else:
        why = reason or "signatures no longer required"
    change.audit.append(AuditEntry(now, "trust", STORE_SCOPE, was, to, actor, why))
    change.put(require_signatures=required)
    change.event(
        "trust.required" if required else "trust.optional", from_state=was, to_state=to, evicted=list(change.evicted)
    )
    return change


def _unverified(
    state: ControlState, verified: Mapping[str, Mapping[str, str]], refused: Mapping[str, str], evict: bool
) -> tuple[str, ...]:
    """The retained versions that may serve again without a verified signature (refused unless ``evict``)."""

    def ok(record: VersionRecord) -> bool:
        return record.signature is not None and dict(verified.get(record.version_id) or {}) == dict(record.signature)

    def why(version_id: str) -> str:
        return refused.get(version_id, f"{version_id}: not checked (it appeared while checking: run the command again)")

    serving = {state.active} | ({state.rollout.candidate, state.rollout.stable} if state.rollout else set())
    bad = [r for r in state.versions.values() if r.state in MAY_SERVE_AGAIN and not ok(r)]
    serving_bad = [r.version_id for r in bad if r.version_id in serving]
    if serving_bad:
        raise DeploymentError(
            "cannot require signatures: what serves is not signed by a trusted key: "
            + "; ".join(why(v) for v in serving_bad[:5])
            + " (deploy a signed version first)"
        )
    if bad and not evict:
        raise DeploymentError(
            f"cannot require signatures: {len(bad)} retained version(s) that may serve again are not signed by a "
            "trusted key: "
            + "; ".join(why(r.version_id) for r in bad[:5])
            + " (take them out of history with evict_unsigned, `rule-engine trust require --evict-unsigned`)"
        )
    return tuple(r.version_id for r in bad)
