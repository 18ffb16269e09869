"""Blast radius before each stage: exactly which recorded traffic each canary stage sends to a version.

Routing is deterministic (docs/routing.md), so this is a count, not an estimate: with the version's
own salt (its version id, the salt ``activate`` gives its rollout) each event's routing key has one
bucket, and a stage of ``p`` percent sends it to the candidate iff ``bucket < round(p * 100)``.
The key is the record's ``key``, else the event's key field, as :class:`~rule_engine.RuleEngine`
routes it; an event without a key is served by the stable version at every stage.

For each stage: events and distinct keys sent to the candidate, and of those the events (and keys)
whose decision differs from the baseline's, and the events the candidate cannot evaluate (the
engine answers them with the stable version and counts the error against the candidate).
Memory: one entry per distinct key (bounded by the number of events read).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rule_engine.analysis.events import Recorded
from rule_engine.control.records import ControlState
from rule_engine.evaluation.table import RuleTable
from rule_engine.serving.routing import ALGORITHM_VERSION, BASIS_POINTS, Salt, percent_to_bp

__all__ = ["DEFAULT_STAGES", "PreviewReport", "StageImpact", "key_identity", "preview", "routing_algorithm_of"]

DEFAULT_STAGES: tuple[float, ...] = (10, 25, 50, 100)


def routing_algorithm_of(state: ControlState, version_id: str) -> int:
    """The routing algorithm ``version_id``'s keys are bucketed by: its running rollout's, else a new rollout's.

    A rollout keeps the algorithm it started under (``Rollout.algorithm``); a version not rolling out
    gets the one ``activate`` stamps on a new rollout (``ALGORITHM_VERSION``).
    """
    rollout = state.rollout
    return rollout.algorithm if rollout is not None and rollout.candidate == version_id else ALGORITHM_VERSION


def key_identity(key: Any) -> str:
    """What makes two routing keys the same key in the counts: their canonical JSON text."""
    try:
        return json.dumps(key, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(key)


@dataclass
class StageImpact:
    """What one stage sends to the candidate."""

    percent: float
    share_bp: int
    events: int = 0
    keys: int = 0
    changed_events: int = 0
    changed_keys: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: every field above."""
        return asdict(self)


@dataclass
class PreviewReport:
    """Every stage's impact, and the totals of the events read."""

    salt: str
    events: int = 0
    keyed_events: int = 0
    keys: int = 0
    stages: list[StageImpact] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "salt": self.salt,
            "events": self.events,
            "keyed_events": self.keyed_events,
            "keyless_events": self.events - self.keyed_events,
            "keys": self.keys,
            "stages": [s.as_dict() for s in self.stages],
        }


def preview(
    candidate: RuleTable,
    baseline: RuleTable,
    salt_text: str,
    events: Iterable[Recorded],
    stages: Sequence[float] = DEFAULT_STAGES,
    algorithm: int = ALGORITHM_VERSION,
) -> PreviewReport:
    """Count, per stage, the traffic routed to ``candidate`` under ``salt_text`` (see the module docstring).

    ``algorithm`` is the routing algorithm of the rollout: by default the one ``activate`` stamps
    on a new rollout; pass ``Rollout.algorithm`` for a rollout already running.
    """
    salt = Salt.from_text(salt_text, algorithm)
    shares = [percent_to_bp(p) for p in stages]
    report = PreviewReport(salt_text, stages=[StageImpact(p, bp) for p, bp in zip(stages, shares, strict=True)])
    cand_error = candidate.error_decision("preview").decision
    base_error = baseline.error_decision("preview").decision
    widest = max(shares, default=0)
    buckets: dict[str, int] = {}
    changed_keys: dict[str, None] = {}
    read = keyed = 0
    per_stage = [[0, 0, 0] for _ in shares]  # events, changed events, errors
    for recorded in events:
        read += 1
        if recorded.key is None:
            continue
        keyed += 1
        ident = key_identity(recorded.key)
        bucket = buckets.get(ident)
        if bucket is None:
            request_hash = salt.request_hash(recorded.key)  # None: unhashable, served by stable
            bucket = buckets[ident] = salt.bucket(request_hash) if request_hash is not None else BASIS_POINTS
        if bucket >= widest:
            continue  # no stage sends it
        error = False
        try:
            after = candidate.evaluate(recorded.event).decision
        except Exception:
            after, error = cand_error, True
        try:
            before = baseline.evaluate(recorded.event).decision
        except Exception:
            before = base_error
        changed = not error and after != before
        if changed:
            changed_keys[ident] = None
        for slot, share in zip(per_stage, shares, strict=True):
            if bucket < share:
                slot[0] += 1
                slot[1] += changed
                slot[2] += error
    for stage, (sent, changed_events, errors) in zip(report.stages, per_stage, strict=True):
        stage.events, stage.changed_events, stage.errors = sent, changed_events, errors
        stage.keys = sum(1 for b in buckets.values() if b < stage.share_bp)
        stage.changed_keys = sum(1 for k in changed_keys if buckets[k] < stage.share_bp)
    report.events, report.keyed_events, report.keys = read, keyed, len(buckets)
    return report
