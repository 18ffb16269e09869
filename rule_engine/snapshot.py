"""The serving snapshot: everything the data plane reads, in one immutable object.

The control plane builds a new :class:`ServingSnapshot` for every change and publishes it with one
attribute assignment; readers take it with one attribute read and never lock. A snapshot routes a
request hash to the stable or the candidate table with the rollout's salt (see
:mod:`rule_engine.routing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rule_engine.routing import Salt

if TYPE_CHECKING:
    from rule_engine.health import VersionRecorder
    from rule_engine.table import RuleTable

__all__ = ["EMPTY_SNAPSHOT", "ServingSnapshot"]

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ServingSnapshot:
    """What serves now: the stable table, an optional candidate and its share of traffic.

    A request goes to the candidate when ``(multiplier * hash + offset) mod 2**64 < limit``, which
    is the routing algorithm's ``bucket < share`` without the division (see :meth:`Salt.limit`).
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
    ) -> ServingSnapshot:
        """A snapshot routing ``share_bp`` basis points of traffic to ``candidate``."""
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
        )

    def route(self, request_hash: int) -> RuleTable | None:
        """The table serving a request with this hash."""
        candidate = self.candidate
        if candidate is not None and (self.multiplier * request_hash + self.offset) & _MASK64 < self.limit:
            return candidate
        return self.stable


EMPTY_SNAPSHOT = ServingSnapshot(stable=None)
