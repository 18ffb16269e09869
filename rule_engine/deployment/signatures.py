"""The store's signature requirement, the side with I/O: verify what the store holds before requiring it.

:func:`requirement_planner` reads each retained version that may serve again from the store,
verifies its recorded signature with the operator's trust policy, and returns the pure planner
(:func:`rule_engine.control.signatures.require`) that commits the requirement on what it found.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from rule_engine.bundle.signing import TrustPolicy, verify_recorded
from rule_engine.control import signatures
from rule_engine.deployment.publisher import Publisher
from rule_engine.errors import BundleTrustError, Problem, RuleEngineError
from rule_engine.stores.integrity import load_checked_bundle

__all__ = ["requirement_planner", "verify_retained"]


def verify_retained(publisher: Publisher, trust: TrustPolicy) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(verified, refused): the retained versions that may serve again whose stored signature ``trust`` verifies.

    ``verified`` maps each to its signature record; ``refused`` says why each other one did not
    (unsigned, changed, untrusted key, bundle missing or damaged). At most the retained history is read.
    """
    verified: dict[str, dict[str, str]] = {}
    refused: dict[str, str] = {}
    for version_id, record in publisher.state.versions.items():
        if record.state not in signatures.MAY_SERVE_AGAIN:
            continue
        try:
            bundle = load_checked_bundle(publisher.store, record)
            if bundle is None:
                refused[version_id] = "its bundle is not in the store"
                continue
            verify_recorded(bundle, record.signature, trust, version_id=version_id)
        except BundleTrustError as exc:
            refused[version_id] = exc.problems[0].message if exc.problems else str(exc)
            continue
        except RuleEngineError as exc:
            refused[version_id] = str(exc)
            continue
        verified[version_id] = dict(record.signature or {})
    return verified, refused


def requirement_planner(
    publisher: Publisher, trust: TrustPolicy | None, required: bool, *, evict_unsigned: bool = False
) -> Any:
    """The planner for ``DeploymentManager.require_signatures`` (turning the requirement on needs ``trust``)."""
    if not required:
        return partial(signatures.require, required=False, verified={}, refused={})
    if trust is None:
        raise BundleTrustError(
            [Problem("trust", "requiring signatures needs a trust policy to verify the versions the store holds")]
        )
    verified, refused = verify_retained(publisher, trust)
    return partial(
        signatures.require,
        required=True,
        verified=verified,
        refused=refused,
        trusted=trust.key_ids,
        evict_unsigned=evict_unsigned,
    )
