"""The in-memory store: the default of a plain ``DeploymentManager()``; state dies with the process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace

from rule_engine.control.instances import InstanceInfo
from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError
from rule_engine.serving.counts import HealthCounts, sum_counts
from rule_engine.stores.base import StateStore
from rule_engine.stores.integrity import GENESIS, AuditCheck, AuditRow, audit_hash, verify_chain

__all__ = ["MemoryStore"]


class MemoryStore(StateStore):
    """Keeps everything in this process's memory; thread-safe."""

    def __init__(self) -> None:
        self.url = "memory://"
        self._lock = threading.Lock()
        self._state = ControlState()
        self._bundles: dict[str, str] = {}
        self._audit: list[AuditRow] = []
        self._identity = str(uuid.uuid4())
        self._buckets: dict[tuple[str, float], HealthCounts] = {}
        self._lifetime: dict[str, HealthCounts] = {}
        self._instances: dict[str, InstanceInfo] = {}

    def load(self) -> ControlState:
        """The current state."""
        return self._state

    def revision(self) -> int:
        """The current revision."""
        return self._state.revision

    def identity(self) -> str:
        """A random id drawn when this store was constructed."""
        return self._identity

    def verify_audit(self) -> AuditCheck:
        """Check the audit hash chain (always sound unless this process tampered with it)."""
        with self._lock:
            rows = list(self._audit)
        return verify_chain(rows, 1, rows[-1].hash if rows else None)

    def commit(
        self,
        expected_revision: int,
        state: ControlState,
        *,
        bundles: dict[str, str] | None = None,
        audit: Sequence[AuditEntry] = (),
        evicted: Sequence[str] = (),
    ) -> ControlState:
        """Write the state if nobody else did since ``expected_revision``."""
        with self._lock:
            if self._state.revision != expected_revision:
                raise ConflictError(
                    f"state changed concurrently: expected revision {expected_revision}, found {self._state.revision}"
                )
            committed = replace(state, revision=expected_revision + 1)
            self._bundles.update(bundles or {})
            for version_id in evicted:
                self._bundles.pop(version_id, None)
            previous = self._audit[-1].hash if self._audit else GENESIS
            for entry in audit:
                numbered = replace(entry, seq=len(self._audit) + 1)
                previous = audit_hash(previous or GENESIS, numbered, committed.revision)
                self._audit.append(AuditRow(numbered, committed.revision, previous))
            self._state = committed
            return committed

    def bundle_json(self, version_id: str) -> str | None:
        """The bundle JSON of a retained version."""
        return self._bundles.get(version_id)

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first."""
        with self._lock:
            entries = [r.entry for r in self._audit if version_id is None or r.entry.version_id == version_id]
        return entries[-limit:] if limit else entries

    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        """Add a delta to a bucket and to the lifetime totals."""
        with self._lock:
            key = (version_id, bucket_start)
            self._buckets[key] = self._buckets.get(key, HealthCounts()) + delta
            self._lifetime[version_id] = self._lifetime.get(version_id, HealthCounts()) + delta

    def health(
        self, version_ids: Sequence[str], since: float | None = None, until: float | None = None
    ) -> dict[str, HealthCounts]:
        """Counters per version over buckets starting within ``[since, until]`` (lifetime totals when both None)."""
        low = float("-inf") if since is None else since
        high = float("inf") if until is None else until
        with self._lock:
            if since is None and until is None:
                return {v: self._lifetime.get(v, HealthCounts()) for v in version_ids}
            wanted = set(version_ids)
            parts: dict[str, list[HealthCounts]] = {v: [] for v in version_ids}
            for (version_id, start), counts in self._buckets.items():
                if version_id in wanted and low <= start <= high:
                    parts[version_id].append(counts)
        return {v: sum_counts(p) for v, p in parts.items()}

    def prune_health(self, before: float) -> None:
        """Drop buckets older than ``before``."""
        with self._lock:
            for key in [k for k in self._buckets if k[1] < before]:
                del self._buckets[key]

    def register_instance(self, info: InstanceInfo) -> None:
        """Write the row of one serving process."""
        with self._lock:
            self._instances[info.instance_id] = info

    def instances(self) -> list[InstanceInfo]:
        """Every registered instance."""
        with self._lock:
            return list(self._instances.values())

    def forget_instance(self, instance_id: str) -> None:
        """Drop one instance's row."""
        with self._lock:
            self._instances.pop(instance_id, None)

    def forget_instances(self, last_seen_before: float) -> int:
        """Drop instances not seen since ``last_seen_before``."""
        with self._lock:
            old = [k for k, v in self._instances.items() if v.last_seen < last_seen_before]
            for key in old:
                del self._instances[key]
            return len(old)
