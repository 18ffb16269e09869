"""How the decision log and the shadow are shown in ``status`` (``shadow`` and ``decision_log``).

It reads what is attached to a manager's serving cell (``rule_engine.serving.decisionlog.Taps``) at
call time; nothing is added to the hot path. Cost: one copy of the shadow's counters (at most
``MAX_GROUPS`` disagreement groups).
"""

from __future__ import annotations

from typing import Any

from rule_engine.health.shadow import ShadowPolicy
from rule_engine.serving.shadow import ShadowEvaluator
from rule_engine.serving.snapshot import ServingCell

__all__ = ["taps_view"]

_POLICY = ShadowPolicy()


def taps_view(cell: ServingCell, policy: ShadowPolicy = _POLICY) -> dict[str, Any]:
    """``{"shadow": report + verdict, "decision_log": counters}`` of what ``cell`` taps (each only when attached).

    A shadow and a decision log live in the serving process (``rule-engine serve``), so its
    ``GET /api/v1/status`` shows them; a CLI process attached to nothing shows neither.
    """
    taps = cell.taps
    log = taps.log if taps is not None else None
    shadow = taps.shadow if taps is not None else None
    shadow_view = None
    if isinstance(shadow, ShadowEvaluator):
        report = shadow.report()
        shadow_view = {**report.to_dict(), "verdict": policy.judge(report).to_dict()}
    log_view = None
    if log is not None:
        log_view = {
            "sample_rate": log.sample_rate,
            "sampled": log.sampled,
            "dropped": log.dropped,
            "pending": log.pending,
        }
    shown = {"shadow": shadow_view, "decision_log": log_view}
    return {name: value for name, value in shown.items() if value is not None}
