"""Judging a shadow: hold, abort, or proceed to a canary, from its disagreement and error rates.

:class:`ShadowPolicy` reads a :class:`~rule_engine.serving.shadow.ShadowReport` (pure: no I/O, no
clock) and answers a :class:`ShadowVerdict`:

- ``hold`` while fewer than ``min_compared`` events were compared, or a rate is over its ``max_*``
  threshold (it may come back: keep shadowing, look at the groups);
- ``abort`` when a rate is over its ``abort_*`` threshold (the candidate is not worth a canary);
- ``proceed`` otherwise: the candidate may start its canary (``deploy VERSION --strategy canary``).

Rates equal to a threshold pass, as replay's gate does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rule_engine.serving.shadow import ShadowReport

__all__ = ["ShadowPolicy", "ShadowVerdict"]

Action = Literal["hold", "abort", "proceed"]


@dataclass(frozen=True, slots=True)
class ShadowVerdict:
    """What to do with a shadowed candidate, and why (one line for people)."""

    action: Action
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The JSON form."""
        return {"action": self.action, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    """Thresholds on a shadow's figures (rates in 0..1; ``abort_*`` >= the matching ``max_*``)."""

    min_compared: int = 500
    max_disagreement_rate: float = 0.05
    abort_disagreement_rate: float = 0.25
    max_error_rate: float = 0.0
    abort_error_rate: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.min_compared, bool) or not isinstance(self.min_compared, int) or self.min_compared < 0:
            raise ValueError(f"min_compared must be an integer >= 0, got {self.min_compared!r}")
        for name in ("max_disagreement_rate", "abort_disagreement_rate", "max_error_rate", "abort_error_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if self.abort_disagreement_rate < self.max_disagreement_rate or self.abort_error_rate < self.max_error_rate:
            raise ValueError("abort thresholds must be >= the matching hold (max_*) thresholds")

    def judge(self, report: ShadowReport) -> ShadowVerdict:
        """Hold, abort or proceed (see the module docstring); errors are judged before disagreement."""
        errors, disagreement = report.error_rate, report.disagreement_rate
        if report.evaluations and errors > self.abort_error_rate:
            return ShadowVerdict("abort", f"error rate {errors:.2%} > {self.abort_error_rate:.2%}")
        if report.compared >= self.min_compared and disagreement > self.abort_disagreement_rate:
            return ShadowVerdict("abort", f"disagreement {disagreement:.2%} > {self.abort_disagreement_rate:.2%}")
        if report.compared < self.min_compared:
            return ShadowVerdict("hold", f"{report.compared} of {self.min_compared} events compared")
        if errors > self.max_error_rate:
            return ShadowVerdict("hold", f"error rate {errors:.2%} > {self.max_error_rate:.2%}")
        if disagreement > self.max_disagreement_rate:
            return ShadowVerdict("hold", f"disagreement {disagreement:.2%} > {self.max_disagreement_rate:.2%}")
        return ShadowVerdict(
            "proceed", f"disagreement {disagreement:.2%}, error rate {errors:.2%} on {report.compared} events"
        )
