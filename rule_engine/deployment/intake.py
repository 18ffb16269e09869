"""Intake: what a bundle goes through before it may be staged.

A bundle arrives as a :class:`RuleBundle`, a mapping, JSON text or a path. It is validated, its
signature checked against the trust policy (before its tests run or anything is compiled), its
strategy checked, compiled, and its own tests run; only then is the ``prepare`` plan built, which
gives the version its id and stages it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rule_engine.bundle.models import RuleBundle, canonical_json, load_bundle, parse_bundle
from rule_engine.bundle.signing import Signature, TrustPolicy, signature_beside
from rule_engine.control import signatures
from rule_engine.control import transitions as control
from rule_engine.control.records import ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import BlueGreen, Strategy, require_strategy
from rule_engine.control.transitions import Change
from rule_engine.deployment.commit import Plan
from rule_engine.deployment.config import DeploymentConfig
from rule_engine.deployment.controller import require_thresholds, with_analysis
from rule_engine.deployment.publisher import Publisher
from rule_engine.errors import PolicyMismatchError
from rule_engine.evaluation.selftest import run_bundle_tests
from rule_engine.evaluation.table import RuleTable
from rule_engine.health.thresholds import HealthThresholds

__all__ = ["BundleSource", "checked_strategy", "coerce_bundle", "plan_prepare", "stage", "trusted_bundle"]

BundleSource = RuleBundle | Mapping[str, Any] | str | bytes | os.PathLike[str]


def coerce_bundle(bundle: BundleSource) -> RuleBundle:
    """Validate ``bundle`` into a :class:`RuleBundle` (raises :class:`BundleValidationError`)."""
    if isinstance(bundle, RuleBundle):
        return bundle
    if isinstance(bundle, Mapping):
        return parse_bundle(json.dumps(bundle, allow_nan=True))
    if isinstance(bundle, bytes):
        return parse_bundle(bundle)
    if isinstance(bundle, str) and bundle.lstrip().startswith("{"):
        return parse_bundle(bundle)
    if isinstance(bundle, str | os.PathLike):
        return load_bundle(Path(bundle))
    raise TypeError(f"expected a RuleBundle, a mapping, JSON text or a path, got {type(bundle).__name__}")


def trusted_bundle(bundle: BundleSource, trust: TrustPolicy | None, signature: Signature | None) -> RuleBundle:
    """The validated bundle, its signature verified when there is a trust policy (the one place trust is checked)."""
    validated = coerce_bundle(bundle)
    if trust is not None:
        trust.verify(validated, signature if signature is not None else signature_beside(bundle))
    return validated


def checked_strategy(strategy: Strategy | None) -> Strategy:
    """The strategy to stage with (blue-green by default); refuses anything else."""
    return require_strategy(strategy if strategy is not None else BlueGreen())


def plan_prepare(
    bundle: RuleBundle,
    strategy: Strategy,
    actor: str,
    max_history: int,
    *,
    replace_policy: bool = False,
    signature: Signature | None = None,
    has_trust: bool = False,
) -> Plan:
    """The plan that stages ``bundle`` as a new version (its id: ``bundle@version+digest8.seq``).

    A bundle of another policy (``bundle_id``) than the active version's is refused
    (:class:`PolicyMismatchError`) unless ``replace_policy``: checked against the state the plan is
    committed on, so a concurrent deploy of another policy cannot slip past it. ``signature`` (the
    one this process's trust policy verified) is recorded with the version; a store that requires
    signatures refuses the plan without one (control/signatures.py).
    """
    bundle_json = canonical_json(bundle)

    def plan(state: ControlState, now: float) -> Change:
        serving = state.versions.get(state.active) if state.active else None
        if serving is not None and serving.bundle_id != bundle.bundle_id and not replace_policy:
            raise PolicyMismatchError(bundle.bundle_id, serving.bundle_id, serving.version_id)
        seq = state.next_seq
        record = VersionRecord(
            version_id=f"{bundle.bundle_id}@{bundle.version}+{bundle.digest[:8]}.{seq}",
            seq=seq,
            bundle_id=bundle.bundle_id,
            bundle_version=bundle.version,
            digest=bundle.digest,
            deployed_by=actor,
            strategy=strategy,
            state=DeploymentState.STAGED,
            created_at=now,
            updated_at=now,
            signature=signatures.recorded(signature),
        )
        signatures.check_prepare(state, record, has_trust)
        return control.prepare(state, record, bundle_json, now, max_history)

    return plan


def stage(
    bundle: BundleSource,
    strategy: Strategy | None,
    actor: str,
    signature: Signature | None,
    config: DeploymentConfig,
    publisher: Publisher,
    analysis: HealthThresholds | None = None,
    replace_policy: bool = False,
) -> tuple[Plan, RuleTable]:
    """Everything before a bundle may be staged: validate, check trust, check the strategy, compile, self-test.

    Returns the prepare plan and the compiled table; raises (with nothing changed) when the bundle is unfit.
    """
    if config.trust is not None and signature is None:
        signature = signature_beside(bundle)
    validated = trusted_bundle(bundle, config.trust, signature)
    verified = signature if config.trust is not None else None  # recorded only once verified here
    if config.trust is not None and config.trust.refuse_downgrade:
        active = publisher.state.active
        config.trust.check_downgrade(validated, publisher.bundle_of(active) if active is not None else None)
    chosen = checked_strategy(strategy)
    base = publisher.base_table(validated)
    run_bundle_tests(validated, base)
    plan = plan_prepare(
        validated,
        chosen,
        actor,
        config.max_history,
        replace_policy=replace_policy,
        signature=verified,
        has_trust=config.trust is not None,
    )
    return (with_analysis(plan, require_thresholds(analysis)) if analysis is not None else plan), base
