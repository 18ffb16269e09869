"""The in-memory store: the default of a plain ``DeploymentManager()``; state dies with the process.

One :class:`MemoryStore` constructed is one store; :meth:`MemoryStore.scoped` hands out handles on its
other deployments that share its memory (and its lock).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from rule_engine.control.instances import InstanceInfo
from rule_engine.control.records import AuditEntry, ControlState
from rule_engine.errors import ConflictError
from rule_engine.serving.counts import HealthCounts, sum_counts
from rule_engine.stores.base import StateStore
from rule_engine.stores.deployments import UNBOUND, check_name, name_for, pick
from rule_engine.stores.integrity import GENESIS, AuditCheck, AuditRow, audit_hash, verify_chain

__all__ = ["MemoryStore"]


@dataclass
class _Deployment:
    state: ControlState = field(default_factory=ControlState)
    bundles: dict[str, str] = field(default_factory=dict)
    audit: list[AuditRow] = field(default_factory=list)
    buckets: dict[tuple[str, float], HealthCounts] = field(default_factory=dict)
    lifetime: dict[str, HealthCounts] = field(default_factory=dict)


@dataclass
class _Memory:
    """What every handle on one memory store shares."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    identity: str = field(default_factory=lambda: str(uuid.uuid4()))
    deployments: dict[str, _Deployment] = field(default_factory=dict)
    instances: dict[str, tuple[str, InstanceInfo]] = field(default_factory=dict)  # id -> (deployment, row)
    last_seq: int = 0

    def names(self) -> list[str]:
        return sorted(n for n, d in self.deployments.items() if d.state.revision > 0)


class MemoryStore(StateStore):
    """Keeps everything in this process's memory; thread-safe."""

    def __init__(self, *, deployment: str | None = None, _shared: _Memory | None = None) -> None:
        self.url = "memory://"
        self.deployment = None if deployment is None else check_name(deployment)
        self._memory = _shared if _shared is not None else _Memory()

    def scoped(self, name: str) -> MemoryStore:
        """A handle on deployment ``name`` of this store (sharing its memory)."""
        return MemoryStore(deployment=name, _shared=self._memory)

    def deployment_names(self) -> list[str]:
        """The deployments committed at least once."""
        with self._memory.lock:
            return self._memory.names()

    def deployment_states(self) -> dict[str, ControlState]:
        """Every deployment's current state."""
        with self._memory.lock:
            return {n: self._memory.deployments[n].state for n in self._memory.names()}

    def _scope(self) -> str:
        """The deployment this call works on (call with the lock held); binds an unbound handle."""
        name = pick(self.deployment, self._memory.names(), "the memory store")
        if name != UNBOUND:
            self.deployment = name
        return name

    def _mine(self) -> _Deployment:
        return self._memory.deployments.setdefault(self._scope(), _Deployment())

    def load(self) -> ControlState:
        """The current state."""
        with self._memory.lock:
            return self._mine().state

    def revision(self) -> int:
        """The current revision."""
        return self.load().revision

    def identity(self) -> str:
        """A random id drawn when this store was constructed."""
        return self._memory.identity

    def verify_audit(self) -> AuditCheck:
        """Check the audit hash chain (always sound unless this process tampered with it)."""
        with self._memory.lock:
            rows = list(self._mine().audit)
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
        with self._memory.lock:
            name = self._scope()
            if name == UNBOUND:
                name = name_for(state)
            mine = self._memory.deployments.setdefault(name, _Deployment())
            if mine.state.revision != expected_revision:
                raise ConflictError(
                    f"state changed concurrently: expected revision {expected_revision}, found {mine.state.revision}"
                )
            committed = replace(state, revision=expected_revision + 1)
            mine.bundles.update(bundles or {})
            for version_id in evicted:
                mine.bundles.pop(version_id, None)
            previous = mine.audit[-1].hash if mine.audit else GENESIS
            for entry in audit:
                self._memory.last_seq += 1
                numbered = replace(entry, seq=self._memory.last_seq)
                previous = audit_hash(previous or GENESIS, numbered, committed.revision)
                mine.audit.append(AuditRow(numbered, committed.revision, previous))
            mine.state = committed
            self.deployment = name
            return committed

    def bundle_json(self, version_id: str) -> str | None:
        """The bundle JSON of a retained version."""
        with self._memory.lock:
            return self._mine().bundles.get(version_id)

    def audit_log(self, version_id: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit entries, oldest first."""
        with self._memory.lock:
            entries = [r.entry for r in self._mine().audit if version_id is None or r.entry.version_id == version_id]
        return entries[-limit:] if limit else entries

    def add_health(self, version_id: str, bucket_start: float, delta: HealthCounts) -> None:
        """Add a delta to a bucket and to the lifetime totals."""
        with self._memory.lock:
            mine = self._mine()
            key = (version_id, bucket_start)
            mine.buckets[key] = mine.buckets.get(key, HealthCounts()) + delta
            mine.lifetime[version_id] = mine.lifetime.get(version_id, HealthCounts()) + delta

    def health(
        self, version_ids: Sequence[str], since: float | None = None, until: float | None = None
    ) -> dict[str, HealthCounts]:
        """Counters per version over buckets starting within ``[since, until]`` (lifetime totals when both None)."""
        low = float("-inf") if since is None else since
        high = float("inf") if until is None else until
        with self._memory.lock:
            mine = self._mine()
            if since is None and until is None:
                return {v: mine.lifetime.get(v, HealthCounts()) for v in version_ids}
            wanted = set(version_ids)
            parts: dict[str, list[HealthCounts]] = {v: [] for v in version_ids}
            for (version_id, start), counts in mine.buckets.items():
                if version_id in wanted and low <= start <= high:
                    parts[version_id].append(counts)
        return {v: sum_counts(p) for v, p in parts.items()}

    def prune_health(self, before: float) -> None:
        """Drop buckets older than ``before``."""
        with self._memory.lock:
            mine = self._mine()
            for key in [k for k in mine.buckets if k[1] < before]:
                del mine.buckets[key]

    def register_instance(self, info: InstanceInfo) -> None:
        """Write the row of one serving process (under this handle's deployment)."""
        with self._memory.lock:
            self._memory.instances[info.instance_id] = (self._scope(), info)

    def instances(self) -> list[InstanceInfo]:
        """Every registered instance of this deployment."""
        with self._memory.lock:
            scope = self._scope()
            return [info for name, info in self._memory.instances.values() if name in (scope, UNBOUND)]

    def forget_instance(self, instance_id: str) -> None:
        """Drop one instance's row."""
        with self._memory.lock:
            self._memory.instances.pop(instance_id, None)

    def forget_instances(self, last_seen_before: float) -> int:
        """Drop this deployment's instances not seen since ``last_seen_before``."""
        with self._memory.lock:
            scope = self._scope()
            old = [
                k
                for k, (name, info) in self._memory.instances.items()
                if name in (scope, UNBOUND) and info.last_seen < last_seen_before
            ]
            for key in old:
                del self._memory.instances[key]
            return len(old)
