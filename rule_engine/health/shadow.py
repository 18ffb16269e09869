"""Judging a shadow: hold, abort, or proceed to a canary, from its disagreement and error rates.

:class:`ShadowPolicy` reads a :class:`~rule_engine.serving.shadow.ShadowReport` (pure: no I/O, no
clock) and answers a :class:`ShadowVerdict`:

- ``hold`` while fewer than ``min_compared`` events were compared, or a rate is over its ``max_*``
  threshold (it may come back: keep shadowing, look at the groups);
- ``abort`` when a rate is over its ``abort_*`` threshold (the candidate is not worth a canary);
- ``proceed`` otherwise: the candidate may start its canary (``deploy VERSION --strategy canary``).

Rates equal to a threshold pass, as replay's gate does.

A stored shadow phase's counts (control/shadowing.py) travel through the stores' health buckets as
a **shadow bucket**: a health row keyed :func:`shadow_key` (the candidate's id + ``#shadow``, which
no version id can be: they end in a digit), its :class:`HealthCounts` carrying the report's counts
(:func:`counts_of_report`, :func:`report_of_counts`). No store changes: memory, SQLite and
PostgreSQL add the rows up and prune them like any health bucket.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Literal

from rule_engine.serving.counts import HealthCounts
from rule_engine.serving.shadow import MAX_GROUPS, OTHER, Group, ShadowReport

__all__ = ["ShadowPolicy", "ShadowVerdict", "counts_of_report", "report_of_counts", "shadow_key"]

SHADOW_SUFFIX = "#shadow"

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


def shadow_key(version_id: str) -> str:
    """The health-bucket key of ``version_id``'s shadow counts."""
    return version_id + SHADOW_SUFFIX


def counts_of_report(report: ShadowReport) -> HealthCounts:
    """A shadow report (a delta) as a shadow bucket's :class:`HealthCounts`.

    ``evaluations``/``errors`` are the shadow's, ``fallbacks`` its ``baseline_errors``, ``decisions``
    the disagreement groups (keyed by the JSON list ``[agent, flow, from, to]``), ``rules`` the other
    counters by name.
    """
    named = {
        "sampled": report.sampled,
        "dropped": report.dropped,
        "disagreements": report.disagreements,
        "same_decision_other_rule": report.same_decision_other_rule,
    }
    return HealthCounts(
        evaluations=report.evaluations,
        errors=report.errors,
        fallbacks=report.baseline_errors,
        decisions={json.dumps(list(g)): n for g, n in report.groups.items()},  # ASCII: any label stores
        rules={k: v for k, v in named.items() if v},
    )


def report_of_counts(version_id: str, sample_rate: float, counts: HealthCounts) -> ShadowReport:
    """A shadow bucket's counts read back (from the store: checked) as a report.

    Groups that do not decode are counted under ``(other)``; past :data:`MAX_GROUPS` (several
    processes each counted their own), the smallest are folded into ``(other)`` too.
    """
    groups: dict[Group, int] = {}
    other = (OTHER, OTHER, OTHER, OTHER)
    for key, n in counts.decisions.items():
        group = _group(key)
        groups[group or other] = groups.get(group or other, 0) + max(int(n), 0)
    if len(groups) > MAX_GROUPS:
        ranked = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
        groups = dict(ranked[: MAX_GROUPS - 1])
        folded = sum(n for _, n in ranked[MAX_GROUPS - 1 :])
        groups[other] = groups.get(other, 0) + folded
    named = counts.rules
    return ShadowReport(
        version_id,
        sample_rate,
        sampled=max(int(named.get("sampled", 0)), 0),
        dropped=max(int(named.get("dropped", 0)), 0),
        evaluations=max(counts.evaluations, 0),
        errors=min(max(counts.errors, 0), max(counts.evaluations, 0)),
        baseline_errors=max(counts.fallbacks, 0),
        disagreements=max(int(named.get("disagreements", 0)), 0),
        same_decision_other_rule=max(int(named.get("same_decision_other_rule", 0)), 0),
        groups=groups,
    )


def _group(key: str) -> Group | None:
    try:
        value = json.loads(key)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, str) for v in value):
        return value[0], value[1], value[2], value[3]
    return None
