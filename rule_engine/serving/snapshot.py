"""The serving snapshot: everything the data plane reads, in one immutable object.

The control plane builds a new :class:`ServingSnapshot` for every change and publishes it with one
attribute assignment; readers take it with one attribute read and never lock. A snapshot routes a
request hash to the stable or the candidate table with the rollout's salt (see
:mod:`rule_engine.serving.routing`); a scoped rollout or one with pinned keys also carries a
:class:`~rule_engine.serving.targeting.Targeting` (None otherwise), consulted before the hash.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rule_engine.serving.routing import Salt

if TYPE_CHECKING:
    from rule_engine.evaluation.table import RuleTable
    from rule_engine.serving.decisionlog import Taps
    from rule_engine.serving.recorder import VersionRecorder
    from rule_engine.serving.targeting import Targeting

__all__ = ["EMPTY_SNAPSHOT", "ServingCell", "ServingSnapshot", "SnapshotSource"]


@dataclass(frozen=True, slots=True)
class ServingSnapshot:
    """What serves now: the stable table, an optional candidate and its share of traffic.

    A request goes to the candidate when ``(multiplier * hash + offset) mod 2**64 < limit``
    (algorithm 1), or ``hash < limit`` when ``multiplier`` is 0 (algorithm 2), ``hash`` being the
    key's murmur3 with ``seed``: the routing algorithm's ``bucket < share`` without the division
    (see :meth:`Salt.limit`).

    ``taps`` (None by default) is the decision log and shadow evaluator the engine offers each
    decision to (:mod:`rule_engine.serving.decisionlog`); the :class:`ServingCell` stamps the taps
    attached to it onto every snapshot published into it.

    ``hash_only`` is derived, never passed: True when a request is routed by the seeded hash alone
    (a stable and a candidate, algorithm 2, no scope, no pins), so a hot path may test
    ``hash(key, seed) < limit`` and nothing else (``DeploymentManager.route`` does).
    """

    stable: RuleTable | None
    candidate: RuleTable | None = None
    multiplier: int = 1
    offset: int = 0
    limit: int = 0
    share_bp: int = 0
    stable_recorder: VersionRecorder | None = None
    candidate_recorder: VersionRecorder | None = None
    revision: int = 0
    targeting: Targeting | None = None  # scope and pins of the rollout (serving/targeting.py); None: none
    seed: int = 0  # murmur3's seed for the request hash: 0 (algorithm 1) or the salt's (algorithm 2)
    taps: Taps | None = None
    hash_only: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        hash_only = (
            self.candidate is not None and self.stable is not None and self.targeting is None and self.multiplier == 0
        )
        object.__setattr__(self, "hash_only", hash_only)

    @classmethod
    def build(
        cls,
        stable: RuleTable | None,
        candidate: RuleTable | None,
        salt: Salt | None,
        share_bp: int,
        *,
        stable_recorder: VersionRecorder | None = None,
        candidate_recorder: VersionRecorder | None = None,
        revision: int = 0,
        targeting: Targeting | None = None,
    ) -> ServingSnapshot:
        """A snapshot routing ``share_bp`` basis points of traffic to ``candidate`` (``targeting`` first)."""
        if candidate is None or salt is None or share_bp <= 0:
            return cls(stable, None, stable_recorder=stable_recorder, revision=revision)
        return cls(
            stable,
            candidate,
            salt.multiplier,
            salt.offset,
            salt.limit(share_bp),
            share_bp,
            stable_recorder,
            candidate_recorder,
            revision,
            targeting,
            salt.seed,
        )


EMPTY_SNAPSHOT = ServingSnapshot(stable=None)


class ServingCell:
    """The one mutable thing the data plane reads: a slot holding the current :class:`ServingSnapshot`.

    The control plane publishes by assigning ``cell.current`` (one assignment); readers take
    ``cell.current`` once per call and work on that immutable object, with no lock.

    A decision log or a shadow evaluator is attached to the cell (:meth:`attach`), not to one
    snapshot: every snapshot assigned to ``current`` afterwards carries them in its ``taps``, so they
    last across deployments and rollbacks until detached. Only writes pay for this; reads of
    ``current`` stay one slot read.
    """

    __slots__ = ("_taps", "current")
    _taps: Taps | None
    current: ServingSnapshot

    def __init__(self, snapshot: ServingSnapshot = EMPTY_SNAPSHOT) -> None:
        object.__setattr__(self, "_taps", None)
        self.current = snapshot

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "current" and isinstance(value, ServingSnapshot) and value.taps is not self._taps:
            value = dataclasses.replace(value, taps=self._taps)
        object.__setattr__(self, name, value)

    @property
    def taps(self) -> Taps | None:
        """The decision log and shadow attached to this cell (None: neither)."""
        return self._taps

    def attach(self, taps: Taps | None) -> None:
        """Tap every snapshot published from now on (and the current one) into ``taps`` (None: stop)."""
        object.__setattr__(self, "_taps", taps if taps else None)
        self.current = self.current


class SnapshotSource(Protocol):
    """Anything that exposes a :class:`ServingCell` (a :class:`~rule_engine.DeploymentManager` does)."""

    @property
    def serving_cell(self) -> ServingCell:
        """The cell this source publishes into."""
        ...
