"""Small builders for tests: bundle documents, and the control-plane values stores keep.

The bundle builders return plain ``dict`` documents in the bundle format (``docs/bundle-format.md``),
ready for ``DeploymentManager.prepare_deployment`` or ``json.dumps``; nothing is validated here, so a
test can also build an invalid bundle on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import BlueGreen, Strategy

__all__ = ["audit_entry", "bundle", "control_state", "rule", "version_record"]


def rule(
    rule_id: str = "deny-x",
    *,
    field: str = "x",
    op: str = "eq",
    value: Any = 1,
    decision: str = "deny",
    priority: int = 1,
    reason: str | None = None,
    when: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A rule: ``field op value`` (or the condition ``when``) -> ``decision``.

    ``extra`` adds other rule keys as they are (``agents``, ``flows``, ``description``).
    """
    condition = dict(when) if when is not None else {"field": field, "op": op, "value": value}
    outcome: dict[str, Any] = {"decision": decision, "reason": reason if reason is not None else rule_id}
    return {"id": rule_id, "priority": priority, "when": condition, "then": outcome, **extra}


def bundle(
    rules: Iterable[Mapping[str, Any]] | None = None,
    *,
    bundle_id: str = "test",
    version: str = "1.0.0",
    default: str | None = "allow",
    on_error: str | None = None,
    tests: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A bundle document; ``rules`` defaults to one :func:`rule` (``x == 1`` -> deny).

    ``default`` is the decision when no rule matches (None: no default), ``on_error`` the decision
    when a rule fails on an event (None: none), ``tests`` the bundle's own tests as given.
    """
    document: dict[str, Any] = {
        "bundle_id": bundle_id,
        "version": version,
        "rules": [dict(r) for r in (rules if rules is not None else [rule()])],
    }
    if default is not None:
        document["default"] = {"decision": default, "reason": "default"}
    if on_error is not None:
        document["on_error"] = {"decision": on_error, "reason": "evaluation failed"}
    cases = [dict(t) for t in tests]
    if cases:
        document["tests"] = cases
    return document


def version_record(
    version_id: str,
    seq: int,
    state: DeploymentState = DeploymentState.STAGED,
    *,
    strategy: Strategy | None = None,
    bundle_id: str = "b",
    bundle_version: str = "1",
    created_at: float = 100.0,
) -> VersionRecord:
    """A version record as a store keeps it (digest ``digest-<id>``, deployed by ``alice``)."""
    return VersionRecord(
        version_id=version_id,
        seq=seq,
        bundle_id=bundle_id,
        bundle_version=bundle_version,
        digest=f"digest-{version_id}",
        deployed_by="alice",
        strategy=strategy if strategy is not None else BlueGreen(),
        state=state,
        created_at=created_at,
        updated_at=created_at + seq,
    )


def control_state(*records: VersionRecord, active: str | None = None) -> ControlState:
    """A state at revision 0 holding ``records``, with ``active`` serving (and alone in the lineage)."""
    return ControlState(
        next_seq=len(records) + 1,
        versions=MappingProxyType({r.version_id: r for r in records}),
        active=active,
        lineage=(active,) if active else (),
    )


def audit_entry(version_id: str, action: str = "prepare", *, actor: str = "bob", at: float = 1.0) -> AuditEntry:
    """An audit entry (``None -> staged``) not yet numbered by a store."""
    return AuditEntry(at=at, action=action, version_id=version_id, from_state=None, to_state="staged", actor=actor)
