"""Targeting on the hot path: a rollout's scope (agents, flows) and its pinned keys (docs/routing.md).

A :class:`Targeting` rides on a :class:`~rule_engine.ServingSnapshot` only when the rollout in
progress is scoped or has pinned keys; otherwise the snapshot's ``targeting`` is None and routing
costs one None-check more than before. When present, it decides before the hash does:

1. an event outside the scope (its ``agent_id`` not among ``agents``, when agents are set; its
   ``flow_id`` not among ``flows``, when flows are set) is served by the stable version;
2. a pinned key (a text key, or an ``int`` key as its decimal text) is served by the version it is
   pinned to: one dict lookup;
3. anything else is routed by the salted hash, exactly as without targeting.

The scope wins over a pin: an out-of-scope event never reaches the candidate, whatever its key.
Reads only; never raises for a well-formed event (a raising event is the engine's to catch: stable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmh3 import hash as murmur3  # murmur3(data, seed, False): the unsigned 32-bit hash routing is made of

from rule_engine.serving.routing import goes_to_candidate, hash_key

if TYPE_CHECKING:
    from rule_engine.evaluation.table import RuleTable
    from rule_engine.serving.snapshot import ServingSnapshot

__all__ = ["AGENT_FIELD", "FLOW_FIELD", "Targeting", "murmur3", "route_hash", "route_table"]

_MASK64 = (1 << 64) - 1

#: The event fields a scope is matched on.
AGENT_FIELD = "agent_id"
FLOW_FIELD = "flow_id"


@dataclass(frozen=True, slots=True)
class Targeting:
    """A rollout's scope and pins: ``agents`` / ``flows`` (None = everyone) and ``pins`` (key -> table)."""

    agents: frozenset[str] | None = None
    flows: frozenset[str] | None = None
    pins: Mapping[str, RuleTable] | None = None

    def choose(self, event: Mapping[str, Any], key: object, stable: RuleTable) -> RuleTable | None:
        """The table that serves ``event`` by scope or pin, or None when the salted hash decides.

        Raises whatever ``event.get`` raises (the engine catches it and serves stable); an
        unhashable ``agent_id`` or ``flow_id`` raises ``TypeError`` likewise.
        """
        agents = self.agents
        if agents is not None and event.get(AGENT_FIELD) not in agents:
            return stable
        flows = self.flows
        if flows is not None and event.get(FLOW_FIELD) not in flows:
            return stable
        pins = self.pins
        if pins is not None:
            if isinstance(key, str) and type(key) is str:
                return pins.get(key)
            if type(key) is int:
                return pins.get(str(key))  # over the int-to-str limit: ValueError, caught: stable
        return None

    def admits(self, event: Mapping[str, Any]) -> bool:
        """True when ``event`` is inside the scope (always, for an unscoped targeting)."""
        return (self.agents is None or event.get(AGENT_FIELD) in self.agents) and (
            self.flows is None or event.get(FLOW_FIELD) in self.flows
        )

    @classmethod
    def build(
        cls, agents: tuple[str, ...], flows: tuple[str, ...], pins: Mapping[str, RuleTable] | None
    ) -> Targeting | None:
        """The targeting of a rollout, or None when it is unscoped and has no pins (nothing to check)."""
        if not agents and not flows and not pins:
            return None
        return cls(frozenset(agents) if agents else None, frozenset(flows) if flows else None, pins or None)


def route_table(snapshot: ServingSnapshot, key: object, event: Mapping[str, Any] | None = None) -> RuleTable | None:
    """The table serving a request with routing key ``key`` in ``snapshot``; never raises.

    As :class:`~rule_engine.RuleEngine` routes: scope and pins first, then the salted hash; a key
    that cannot be hashed, or an ``event`` whose reads raise, gets stable. Without an ``event``, a
    scoped rollout routes the key as for an event outside its scope (stable).

    The common case (a ``str`` key, no scope and no pins) is the engine's inlined hash and compare,
    inlined here too (routing.py's rule: ``tests/test_routing_one_rule.py`` holds the copies equal).
    """
    candidate = snapshot.candidate
    if candidate is None:
        return snapshot.stable
    if type(key) is str and snapshot.targeting is None:  # --- routing.py's rule, inlined ---
        request_hash = murmur3(key if key.isascii() else key.encode("utf-8", "surrogatepass"), snapshot.seed, False)
        multiplier = snapshot.multiplier  # 0: algorithm 2, the hash is compared as is
        if ((multiplier * request_hash + snapshot.offset) & _MASK64 if multiplier else request_hash) < snapshot.limit:
            return candidate if snapshot.stable is not None else None
        return snapshot.stable
    stable = snapshot.stable
    if stable is None:
        return None
    try:
        targeting = snapshot.targeting
        if targeting is not None:
            chosen = targeting.choose(event if event is not None else {}, key, stable)
            if chosen is not None:
                return chosen
    except Exception:  # the event's reads raised: stable, as in RuleEngine.evaluate
        return stable
    return route_hash(snapshot, hash_key(key, snapshot.seed))


def route_hash(snapshot: ServingSnapshot, request_hash: int | None) -> RuleTable | None:
    """The table a request hash is routed to by the salted hash alone (no scope, no pins; None: stable)."""
    if (
        snapshot.candidate is not None
        and request_hash is not None
        and goes_to_candidate(snapshot.multiplier, snapshot.offset, snapshot.limit, request_hash)
    ):
        return snapshot.candidate
    return snapshot.stable
