"""Targeting in the control plane: pinning keys to a live version, and what a rollout's scope is.

Pure planners in the style of :mod:`rule_engine.control.transitions` (``(state, ..., now, actor, **args)
-> Change``, raising before computing anything when refused):

- :func:`pin`: serve some keys by the rollout's stable or candidate version, whatever their hash
  says, for the rest of the rollout. Pins are stored on the :class:`~rule_engine.control.records.Rollout`,
  so they end with it (completed, promoted, concluded, rolled back or aborted) and a new rollout
  starts with none. At most :data:`MAX_PINS` keys per rollout, each a non-blank text of at most
  :data:`MAX_PIN_KEY` characters.
- :func:`unpin`: give keys back to the hash.

:func:`targeting_of` turns a state and its compiled tables into the data plane's
:class:`~rule_engine.serving.targeting.Targeting` (None when there is nothing to check), and
:func:`scope_of` / :func:`pin_count` are what ``status`` shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from rule_engine.control.records import ControlState, Rollout
from rule_engine.control.strategies import sorted_names
from rule_engine.control.transitions import Change
from rule_engine.errors import DeploymentError, InvalidTransitionError, VersionNotFoundError
from rule_engine.serving.targeting import Targeting

if TYPE_CHECKING:
    from rule_engine.evaluation.table import RuleTable

__all__ = ["MAX_PINS", "MAX_PIN_KEY", "keys_of", "pin", "pin_count", "scope_of", "targeting_of", "unpin"]

#: At most this many pinned keys in one rollout.
MAX_PINS = 1_000
#: The longest pinned key, in characters.
MAX_PIN_KEY = 256
_LISTED = 20  # keys named in one audit entry or log event; the rest are counted


def keys_of(keys: Iterable[str], action: str) -> tuple[str, ...]:
    """``keys`` to ``action`` (pin, unpin) validated: unique, sorted, at least one, at most :data:`MAX_PINS`.

    Raises :class:`DeploymentError` naming the first bad key; reads at most ``MAX_PINS + 1`` of them.
    """
    what = f"cannot {action} keys"
    given = sorted_names(keys, what=what, kind="key", limit=MAX_PINS, longest=MAX_PIN_KEY, error=DeploymentError)
    if not given:
        raise DeploymentError(f"{what}: no keys given")
    return given


def _listed(keys: tuple[str, ...]) -> str:
    more = len(keys) - _LISTED
    return ", ".join(keys[:_LISTED]) + (f" and {more:,} more" if more > 0 else "")


def _rollout(state: ControlState, action: str) -> Rollout:
    if state.rollout is None:
        raise InvalidTransitionError(f"cannot {action}: no rollout is in progress (pins last for one rollout)")
    return state.rollout


def pin(
    state: ControlState,
    version_id: str,
    now: float,
    actor: str,
    *,
    keys: Iterable[str],
    reason: str = "",
    max_history: int = 10,
) -> Change:
    """Pin ``keys`` to ``version_id``, the rollout's stable or candidate version; ``result``: how many changed.

    Raises :class:`InvalidTransitionError` with no rollout in progress or for a version that is not
    live, :class:`VersionNotFoundError` for an unknown one, and :class:`DeploymentError` for bad keys
    or when the rollout would hold more than :data:`MAX_PINS` pins. Keys already pinned to it are
    left as they are (no change, no audit entry, when all are).
    """
    rollout = _rollout(state, "pin keys")
    if version_id not in (rollout.stable, rollout.candidate):
        if version_id not in state.versions:
            raise VersionNotFoundError(version_id, [rollout.stable, rollout.candidate])
        raise InvalidTransitionError(
            f"cannot pin keys to {version_id!r}: it is not live; pin to {rollout.stable!r} (stable) "
            f"or {rollout.candidate!r} (candidate)"
        )
    wanted = keys_of(keys, "pin")
    changed = tuple(k for k in wanted if rollout.pins.get(k) != version_id)
    pins = {**rollout.pins, **dict.fromkeys(changed, version_id)}
    if len(pins) > MAX_PINS:
        raise DeploymentError(
            f"cannot pin {len(changed):,} more keys: a rollout holds at most {MAX_PINS:,} pinned keys "
            f"({len(rollout.pins):,} now); unpin some first"
        )
    change = Change(state, "pin", actor, result=len(changed))
    if not changed:
        return change
    role = "stable" if version_id == rollout.stable else "candidate"
    why = f"; {reason}" if reason else ""
    change.note(
        state.versions[version_id], now, f"pinned {len(changed):,} key(s) to the {role}: {_listed(changed)}{why}"
    )
    change.put(rollout=replace(rollout, pins=MappingProxyType(pins)))
    change.event(
        "rollout.keys_pinned",
        version_id=version_id,
        role=role,
        keys=list(changed[:_LISTED]),
        count=len(changed),
        pins=len(pins),
        reason=reason,
    )
    return change


def unpin(
    state: ControlState, now: float, actor: str, *, keys: Iterable[str], reason: str = "", max_history: int = 10
) -> Change:
    """Give ``keys`` back to the hash; ``result``: how many were pinned (keys not pinned are ignored).

    One audit entry per version the keys were pinned to. Raises :class:`InvalidTransitionError` with
    no rollout in progress and :class:`DeploymentError` for bad keys.
    """
    rollout = _rollout(state, "unpin keys")
    wanted = keys_of(keys, "unpin")
    removed = [k for k in wanted if k in rollout.pins]
    change = Change(state, "unpin", actor, result=len(removed))
    if not removed:
        return change
    why = f"; {reason}" if reason else ""
    for version_id in dict.fromkeys(rollout.pins[k] for k in removed):
        theirs = tuple(k for k in removed if rollout.pins[k] == version_id)
        change.note(state.versions[version_id], now, f"unpinned {len(theirs):,} key(s): {_listed(theirs)}{why}")
    pins = {k: v for k, v in rollout.pins.items() if k not in set(removed)}
    change.put(rollout=replace(rollout, pins=MappingProxyType(pins)))
    change.event("rollout.keys_unpinned", keys=removed[:_LISTED], count=len(removed), pins=len(pins), reason=reason)
    return change


def targeting_of(state: ControlState, stable: RuleTable | None, candidate: RuleTable | None) -> Targeting | None:
    """The data plane's :class:`Targeting` for ``state`` given its compiled tables (None: nothing to check)."""
    rollout = state.rollout
    if rollout is None or stable is None or candidate is None:
        return None
    record = state.versions.get(rollout.candidate)
    agents, flows = record.strategy.scope() if record is not None else ((), ())
    tables = {rollout.stable: stable, rollout.candidate: candidate}
    pins = {key: tables[v] for key, v in rollout.pins.items() if v in tables}
    return Targeting.build(agents, flows, MappingProxyType(pins) if pins else None)


def scope_of(state: ControlState) -> dict[str, list[str]]:
    """The rollout's scope as ``status --json`` shows it: ``{"agents": [...], "flows": [...]}`` (empty = everyone)."""
    rollout = state.rollout
    record = state.versions.get(rollout.candidate) if rollout is not None else None
    agents, flows = record.strategy.scope() if record is not None else ((), ())
    return {"agents": list(agents), "flows": list(flows)}


def pin_count(state: ControlState) -> int:
    """How many keys the rollout in progress has pinned (0 without a rollout)."""
    return len(state.rollout.pins) if state.rollout is not None else 0
