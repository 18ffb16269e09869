"""Helpers shared by the store tests: small records, states and audit entries, and file copies."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import MappingProxyType

from rule_engine.control.records import AuditEntry, ControlState, VersionRecord
from rule_engine.control.states import DeploymentState
from rule_engine.control.strategies import BlueGreen


def record(version_id: str, seq: int = 1, digest: str | None = None) -> VersionRecord:
    """An active blue-green version record (digest ``digest-<id>`` unless given)."""
    return VersionRecord(
        version_id=version_id, seq=seq, bundle_id="mini", bundle_version="1",
        digest=digest if digest is not None else f"digest-{version_id}", deployed_by="alice",
        strategy=BlueGreen(), state=DeploymentState.ACTIVE, created_at=100.0, updated_at=100.0,
    )  # fmt: skip


def state(*ids: str) -> ControlState:
    """A state holding ``ids`` (in seq order), the last one active."""
    records = {v: record(v, i + 1) for i, v in enumerate(ids)}
    return ControlState(next_seq=len(ids) + 1, versions=MappingProxyType(records), active=ids[-1] if ids else None)


def entry(version_id: str = "v1", actor: str = "bob") -> AuditEntry:
    """One 'prepare' audit entry."""
    return AuditEntry(at=1.5, action="prepare", version_id=version_id, from_state=None, to_state="staged", actor=actor)


def backup(path: Path, target: Path) -> None:
    """Copy an SQLite store with SQLite's online backup (a consistent copy while it is in use)."""
    with sqlite3.connect(path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    source.close()
    copy.close()
