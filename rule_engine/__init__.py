"""rule_engine: ship rule bundles to live evaluators without restarts, by strategy, with rollback.

Everything a user needs is importable from here; the packages behind it are implementation
(``docs/architecture.md`` draws them): ``bundle`` and ``evaluation`` and ``serving`` are the data
plane, ``control``, ``health``, ``deployment`` and ``stores`` the control plane, ``cli`` an edge.
"""

from rule_engine.bundle.models import BundleLimits, RuleBundle, load_bundle, parse_bundle
from rule_engine.bundle.signing import Signature, TrustPolicy, sign_bundle, verify_bundle
from rule_engine.clock import Clock, SystemClock
from rule_engine.control.records import AuditEntry
from rule_engine.control.shadowing import ShadowOptions
from rule_engine.control.states import DeploymentState
from rule_engine.control.status import DeploymentInfo, RolloutStatus, TickReport, VersionId
from rule_engine.control.strategies import ABTest, BlueGreen, Canary, Scheduled, Strategy
from rule_engine.deployment.config import DeploymentConfig
from rule_engine.deployment.hooks import DeploymentEvent, HookPoint
from rule_engine.deployment.manager import DeploymentManager
from rule_engine.errors import (
    ActivationTimeNotReachedError,
    BundleTestFailure,
    BundleTrustError,
    BundleValidationError,
    ConflictError,
    DeploymentError,
    InvalidStrategyError,
    InvalidTransitionError,
    NoPreviousVersionError,
    PolicyMismatchError,
    Problem,
    RolloutInProgressError,
    RuleEngineError,
    RuleEvaluationError,
    StoreError,
    StoreURLError,
    VersionNotFoundError,
)
from rule_engine.evaluation.selftest import run_bundle_tests
from rule_engine.evaluation.table import CompiledRule, Decision, RuleQuery, RuleTable
from rule_engine.health.report import ExperimentReport, VariantReport
from rule_engine.health.thresholds import HealthMetrics, HealthThresholds
from rule_engine.health.verdict import Verdict
from rule_engine.serving.engine import RuleEngine
from rule_engine.serving.routing import compute_request_hash
from rule_engine.serving.snapshot import ServingSnapshot
from rule_engine.stores.base import StateStore, open_store

__all__ = [
    "ABTest",
    "ActivationTimeNotReachedError",
    "AuditEntry",
    "BlueGreen",
    "BundleLimits",
    "BundleTestFailure",
    "BundleTrustError",
    "BundleValidationError",
    "Canary",
    "Clock",
    "CompiledRule",
    "ConflictError",
    "Decision",
    "DeploymentConfig",
    "DeploymentError",
    "DeploymentEvent",
    "DeploymentInfo",
    "DeploymentManager",
    "DeploymentState",
    "ExperimentReport",
    "HealthMetrics",
    "HealthThresholds",
    "HookPoint",
    "InvalidStrategyError",
    "InvalidTransitionError",
    "NoPreviousVersionError",
    "PolicyMismatchError",
    "Problem",
    "RolloutInProgressError",
    "RolloutStatus",
    "RuleBundle",
    "RuleEngine",
    "RuleEngineError",
    "RuleEvaluationError",
    "RuleQuery",
    "RuleTable",
    "Scheduled",
    "ServingSnapshot",
    "ShadowOptions",
    "Signature",
    "StateStore",
    "StoreError",
    "StoreURLError",
    "Strategy",
    "SystemClock",
    "TickReport",
    "TrustPolicy",
    "VariantReport",
    "Verdict",
    "VersionId",
    "VersionNotFoundError",
    "compute_request_hash",
    "load_bundle",
    "open_store",
    "parse_bundle",
    "run_bundle_tests",
    "sign_bundle",
    "verify_bundle",
]

__version__ = "0.1.0"
