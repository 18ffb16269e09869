"""rule_engine: ship rule bundles to live evaluators without restarts, by strategy, with rollback.

Everything a user needs is importable from here; the modules behind it are implementation.
"""

from rule_engine.bundle import BundleLimits, RuleBundle, load_bundle, parse_bundle
from rule_engine.bundle_tests import run_bundle_tests
from rule_engine.engine import RuleEngine
from rule_engine.errors import (
    ActivationTimeNotReachedError,
    BundleTestFailure,
    BundleTrustError,
    BundleValidationError,
    ConflictError,
    DeploymentError,
    InvalidTransitionError,
    NoPreviousVersionError,
    Problem,
    RolloutInProgressError,
    RuleEngineError,
    RuleEvaluationError,
    StoreError,
    StoreURLError,
    VersionNotFoundError,
)
from rule_engine.health import HealthMetrics, HealthThresholds, Verdict
from rule_engine.hooks import DeploymentEvent, HookPoint
from rule_engine.manager import (
    DeploymentInfo,
    DeploymentManager,
    RolloutStatus,
    TickReport,
    VersionId,
)
from rule_engine.records import AuditEntry
from rule_engine.report import ExperimentReport, VariantReport
from rule_engine.routing import compute_request_hash
from rule_engine.states import DeploymentState
from rule_engine.strategies import (
    ABTest,
    BlueGreen,
    Canary,
    InvalidStrategyError,
    Scheduled,
    Strategy,
)
from rule_engine.table import CompiledRule, Decision, RuleQuery, RuleTable

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
    "CompiledRule",
    "ConflictError",
    "Decision",
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
    "StoreError",
    "StoreURLError",
    "Strategy",
    "TickReport",
    "VariantReport",
    "Verdict",
    "VersionId",
    "VersionNotFoundError",
    "compute_request_hash",
    "load_bundle",
    "parse_bundle",
    "run_bundle_tests",
]

__version__ = "0.1.0"
