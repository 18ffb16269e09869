"""The mirror: one process per host copies an upstream store into a read-only local SQLite file.

Evaluator processes on that host follow the local file exactly as they follow any SQLite store, so
the upstream (PostgreSQL, or another SQLite file) sees one reader per host instead of one per
process. Each :meth:`Mirror.sync_once`:

1. reads the upstream's identity and revision (one round trip) and, when the revision moved, its
   state, the bundles the mirror lacks and the audit entries not copied yet, and writes them in one
   local transaction at the upstream's revision (:meth:`SQLiteStore.replicate`);
2. forwards the health deltas local processes flushed into the mirror (an outbox, drained in order
   and acknowledged after the upstream accepted them: at-least-once, a crash between the two can
   count one batch twice);
3. forwards the local fleet rows upstream (each marked ``via`` this mirror) when they changed, and
   forgets upstream the rows of local instances that left.

The local file keeps its own identity for its whole life (a restarted mirror reuses it, so local
followers never see another store); it records the upstream's identity and refuses to copy another
store (a replaced or recreated upstream) or an older revision (a restored backup): that is a
:class:`StoreError`, and the local processes keep serving the last good copy. Local writes (deploy,
rollback, tick) are refused with a :class:`StoreError` naming the upstream.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

from rule_engine.control.instances import InstanceInfo
from rule_engine.errors import StoreError
from rule_engine.logs import get_logger
from rule_engine.observability.views import redact_url
from rule_engine.stores.base import StateStore
from rule_engine.stores.sqlite import SQLiteStore

__all__ = ["Mirror", "SyncReport"]

_log = get_logger()
AUDIT_PAGE = 1000  # audit entries read per sync before falling back to a full read


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync did."""

    revision: int  # the upstream revision the mirror holds now
    copied: bool  # whether the state was copied (the upstream moved)
    health_forwarded: int  # outbox rows sent upstream
    instances_forwarded: int  # local fleet rows written upstream


class Mirror:
    """Keeps ``local`` (an SQLite file) a copy of ``upstream``; call :meth:`open` once, then :meth:`sync_once`."""

    def __init__(self, upstream: StateStore, local: SQLiteStore) -> None:
        self.upstream = upstream
        self.local = local
        self._upstream_identity: str | None = None
        self._forwarded: dict[str, float] = {}  # local instance id -> last_seen forwarded
        self._stop = threading.Event()

    def open(self) -> None:
        """Mark the local file a mirror of the upstream (creating it), refusing another upstream's mirror."""
        identity = self.upstream.identity()
        self.local.make_mirror(redact_url(self.upstream.url), identity)
        self._upstream_identity = identity
        _log.info("mirror.opened", upstream=redact_url(self.upstream.url), local=self.local.url, identity=identity)

    def sync_once(self) -> SyncReport:
        """Copy what moved upstream, forward health and fleet rows (see the module docstring)."""
        if self._upstream_identity is None:
            self.open()
        mark = self.upstream.mark()
        if mark.identity != self._upstream_identity:
            raise StoreError(
                f"the upstream {redact_url(self.upstream.url)} is now store {mark.identity}, not the mirrored "
                f"{self._upstream_identity}: it was replaced; the mirror keeps serving its last copy"
            )
        copied = mark.revision != self.local.revision()
        if copied:
            self._copy()
        return SyncReport(self.local.revision(), copied, self._forward_health(), self._forward_instances())

    def _copy(self) -> None:
        state = self.upstream.load()
        held = self.local.load()
        bundles: dict[str, str] = {}
        for version_id in state.versions:
            if version_id in held.versions and self.local.bundle_json(version_id) is not None:
                continue
            text = self.upstream.bundle_json(version_id)
            if text is not None:
                bundles[version_id] = text
        evicted = [v for v in held.versions if v not in state.versions]
        mark = self.local.mirror_of()
        after = mark.audit_seq if mark is not None else 0
        page = self.upstream.audit_log(limit=AUDIT_PAGE)
        if len(page) == AUDIT_PAGE and (page[0].seq or 0) > after + 1:
            page = self.upstream.audit_log()  # more new entries than a page: read them all
        audit = [e for e in page if e.seq is not None and e.seq > after]
        self.local.replicate(state, bundles=bundles, audit=audit, evicted=evicted)
        _log.debug("mirror.copied", revision=state.revision, bundles=len(bundles), audit=len(audit))

    def _forward_health(self) -> int:
        rows = self.local.outbox()
        if not rows:
            return 0
        self.upstream.add_health_many([(v, b, d) for _, v, b, d in rows])
        self.local.ack_outbox(rows[-1][0])
        return len(rows)

    def _forward_instances(self) -> int:
        local = {i.instance_id: i for i in self.local.instances()}
        written = 0
        for info in local.values():
            if self._forwarded.get(info.instance_id) == info.last_seen:
                continue
            self.upstream.register_instance(_via(info, self.local.url))
            self._forwarded[info.instance_id] = info.last_seen
            written += 1
        for gone in [k for k in self._forwarded if k not in local]:
            self.upstream.forget_instance(gone)
            del self._forwarded[gone]
        return written

    def run(self, interval: float = 0.02, duration: float | None = None) -> None:
        """Sync every ``interval`` seconds until :meth:`stop` (or ``duration`` seconds); failures are logged once.

        While the upstream is unreachable the local copy stays as it was (local processes keep serving
        it); ``mirror.stale`` is logged once and ``mirror.recovered`` once it syncs again.
        """
        import time

        ends = None if duration is None else time.monotonic() + duration
        stale: str | None = None
        while not self._stop.is_set() and (ends is None or time.monotonic() < ends):
            try:
                self.sync_once()
                if stale is not None:
                    _log.info("mirror.recovered", revision=self.local.revision())
                    stale = None
            except (StoreError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                if stale is None:
                    _log.warning("mirror.stale", error=reason)
                stale = reason
            self._stop.wait(interval)

    def stop(self) -> None:
        """Make :meth:`run` return after its current sync."""
        self._stop.set()


def _via(info: InstanceInfo, local_url: str) -> InstanceInfo:
    return info if info.via is not None else replace(info, via=local_url)
