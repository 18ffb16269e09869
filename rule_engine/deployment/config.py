"""The manager's settings as one immutable value.

A :class:`DeploymentConfig` is fixed when a manager is built. Changing a setting is an explicit
operation, :meth:`DeploymentManager.configure`, which derives a new config (validated like the first)
and swaps it in under the manager's lock; what each setting then affects is said on its field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from rule_engine.bundle.signing import TrustPolicy
from rule_engine.health.thresholds import HealthThresholds

__all__ = ["DeploymentConfig"]


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """How a :class:`~rule_engine.DeploymentManager` keeps history, judges health and trusts bundles.

    - ``max_history``: versions kept (the active one, a rollout's, the rollback target and pending
      schedules are never evicted); applies from the next operation.
    - ``thresholds``: when a version is unhealthy (see :class:`HealthThresholds`); applies to the next verdict.
    - ``auto_rollback``: roll an unhealthy candidate (or newly active version) back; otherwise hold it
      for a person.
    - ``evaluation_deadline_us``: an evaluation slower than this counts as a timeout, for versions that
      start serving after the change.
    - ``max_commit_retries``: how often an operation re-plans after another process committed first.
    - ``trust``: when set, ``prepare_deployment`` refuses bundles without a trusted signature.
    """

    max_history: int = 10
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    auto_rollback: bool = False
    evaluation_deadline_us: float = 50_000.0
    max_commit_retries: int = 20
    trust: TrustPolicy | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_history, bool) or not isinstance(self.max_history, int) or self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        if not isinstance(self.thresholds, HealthThresholds):
            raise TypeError(f"thresholds must be HealthThresholds, got {type(self.thresholds).__name__}")
        deadline = self.evaluation_deadline_us
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or math.isnan(deadline) or deadline < 0:
            raise ValueError(f"evaluation_deadline_us must be a number >= 0, got {deadline!r}")
        retries = self.max_commit_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise ValueError(f"max_commit_retries must be >= 1, got {retries!r}")

    def with_changes(self, **changes: Any) -> DeploymentConfig:
        """A new config with ``changes`` applied (validated); this one is unchanged."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}; settings are {sorted(self.__dataclass_fields__)}")
        return replace(self, **changes)
