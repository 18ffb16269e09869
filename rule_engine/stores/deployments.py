"""Several deployments in one store: their names, how a store handle picks one, and what lists them.

A store holds any number of named deployments, one per policy lineage. Each has its own state
document, revision, bundles, audit chain, health buckets and fleet rows; the store has one identity.
A store object is a *handle* on one deployment:

- bound (``open_store(url, deployment=NAME)``, ``store.scoped(NAME)``): every call reads and writes
  deployment ``NAME`` (a name the store does not hold yet reads as an empty state at revision 0;
  its first commit creates it);
- unbound (``open_store(url)``, the default): the handle binds itself, for good, to the only
  deployment the store holds the first time a call finds exactly one. While the store holds none it
  reads as empty, and its first commit creates the deployment and names it after the committed
  state's policy (:func:`name_for`: the ``bundle_id`` of the active, else the newest, version).
  When the store holds several, every call raises :class:`AmbiguousDeploymentError` listing them.

Names follow the ``bundle_id`` rule (:data:`NAME_PATTERN`: letters, digits, ``.``, ``_``, ``-``, at
most 128 characters). The empty name ``""`` is never a deployment: it is where an unbound handle on
an empty store keeps health counters and fleet rows written before the first deploy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rule_engine.control.records import ControlState
from rule_engine.errors import AmbiguousDeploymentError, DeploymentNotFoundError, StoreError, StoreURLError
from rule_engine.stores.integrity import decode_state

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "NAME_PATTERN",
    "UNBOUND",
    "DeploymentSummary",
    "check_name",
    "migrated_name",
    "name_for",
    "pick",
    "require",
    "summaries",
    "summarize",
]

DEFAULT_DEPLOYMENT = "default"  # the name of a migrated store that held no version
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNBOUND = ""  # the scope of an unbound handle on a store that holds no deployment yet


def check_name(name: object) -> str:
    """``name`` if it is a valid deployment name; else :class:`StoreURLError` saying the rule."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise StoreURLError(
            f"{name!r} is not a deployment name (1 to 128 letters, digits, '.', '_' or '-', like a bundle_id)"
        )
    return name


def name_for(state: ControlState) -> str:
    """The name a first commit gives its deployment: the policy of the active, else the newest, version."""
    record = state.versions.get(state.active) if state.active is not None else None
    if record is None and state.versions:
        record = list(state.versions.values())[-1]
    if record is not None and NAME_PATTERN.fullmatch(record.bundle_id):
        return record.bundle_id
    return DEFAULT_DEPLOYMENT


def migrated_name(state_text: object, revision: int) -> str:
    """The deployment a store written before deployments existed becomes (schema upgrades).

    :data:`UNBOUND` for a store that never committed (its first deploy names it); else the policy of
    its active (else newest) version, or ``default`` when the document names none or does not decode.
    """
    if state_text is None and not revision:
        return UNBOUND
    try:
        return name_for(decode_state(state_text, revision, "the store being upgraded"))
    except StoreError:
        return DEFAULT_DEPLOYMENT


def pick(bound: str | None, names: list[str], where: str) -> str:
    """The scope of a handle: ``bound`` if set, else the only name, else :data:`UNBOUND` for none.

    Several names and none bound: :class:`AmbiguousDeploymentError` listing them.
    """
    if bound is not None:
        return bound
    if len(names) > 1:
        raise AmbiguousDeploymentError(sorted(names), where)
    return names[0] if names else UNBOUND


def require(name: str, names: list[str], where: str) -> None:
    """:class:`DeploymentNotFoundError` unless the store (holding ``names``) holds ``name``."""
    if name not in names:
        raise DeploymentNotFoundError(name, sorted(names), where)


@dataclass(frozen=True, slots=True)
class DeploymentSummary:
    """One line of ``rule-engine deployments``: a deployment's name, revision and what it serves."""

    name: str
    revision: int
    active_version_id: str | None
    policy: str | None  # the bundle_id of the active version
    rollout: str | None  # "canary", "ab", ... while a rollout is in progress, else None
    candidate_version_id: str | None
    paused: bool
    versions: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``rule-engine deployments --json``, ``GET /api/v1/deployments``)."""
        return {
            "name": self.name,
            "revision": self.revision,
            "active_version_id": self.active_version_id,
            "policy": self.policy,
            "rollout": self.rollout,
            "candidate_version_id": self.candidate_version_id,
            "paused": self.paused,
            "versions": self.versions,
        }


def summarize(name: str, state: ControlState) -> DeploymentSummary:
    """The summary of deployment ``name`` at ``state``."""
    active = state.versions.get(state.active) if state.active is not None else None
    rollout = state.rollout
    return DeploymentSummary(
        name=name,
        revision=state.revision,
        active_version_id=state.active,
        policy=active.bundle_id if active is not None else None,
        rollout=rollout.kind if rollout is not None else None,
        candidate_version_id=rollout.candidate if rollout is not None else None,
        paused=rollout is not None and rollout.paused_at is not None,
        versions=len(state.versions),
    )


def summaries(states: Mapping[str, ControlState]) -> list[DeploymentSummary]:
    """Summaries of every deployment, by name."""
    return [summarize(name, states[name]) for name in sorted(states)]
