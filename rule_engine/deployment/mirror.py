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

:meth:`Mirror.run` follows an upstream that pushes (PostgreSQL: LISTEN/NOTIFY on one session
connection) by push, a sync as soon as a notification arrives, with a poll of the revision every
:data:`~rule_engine.deployment.follower.PUSH_POLL` seconds as the safety net; the local rows are
forwarded every ``interval``. Any other upstream is synced every ``interval``.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Protocol

from rule_engine.control.instances import InstanceInfo
from rule_engine.deployment.follower import BACKOFF_CAP, BACKOFF_START, PUSH_POLL, STALE_AFTER
from rule_engine.errors import StoreError
from rule_engine.logs import get_logger
from rule_engine.observability.views import redact_url
from rule_engine.stores.base import StateStore
from rule_engine.stores.sqlite import SQLiteStore

__all__ = ["Mirror", "SyncReport"]

_log = get_logger()


class _Listener(Protocol):
    """What :meth:`Mirror.run` needs of an upstream's ``listen()`` (``PostgresListener``)."""

    def wait_for_change(self, timeout: float, *, poll: bool = True) -> int | None: ...
    def last_round_trip_age(self) -> float | None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


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
        self._stale: str | None = None
        self._listener: _Listener | None = None  # the upstream's listener while run() follows it by push
        self._random = random.Random()
        self._polled = float("-inf")  # when the pushed upstream's revision was last polled (monotonic)

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
        health, instances = self.forward()
        return SyncReport(self.local.revision(), copied, health, instances)

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
        """Follow the upstream until :meth:`stop` (or ``duration`` seconds); failures are logged once.

        An upstream that pushes (``listen()``: PostgreSQL's LISTEN/NOTIFY) is followed by push: the
        state is copied as soon as a notification arrives, the revision is polled every
        :data:`PUSH_POLL` seconds as the safety net (one round trip), and the local health and fleet
        rows are forwarded every ``interval`` seconds (local reads; upstream writes only for what
        changed). Any other upstream is synced every ``interval`` seconds (one ``mark()`` each).
        While the upstream is unreachable (or, pushed, silent for :data:`STALE_AFTER` seconds) the
        local copy stays as it was (local processes keep serving it); ``mirror.stale`` is logged
        once and ``mirror.recovered`` once it answers again; reconnects back off (capped, jittered).
        """
        ends = None if duration is None else time.monotonic() + duration
        listen = getattr(self.upstream, "listen", None)
        listener: _Listener | None = listen() if callable(listen) else None
        self._listener = listener
        backoff = 0.0
        try:
            while not self._stop.is_set() and (ends is None or time.monotonic() < ends):
                try:
                    if listener is None:
                        self.sync_once()
                        self._recovered()
                    else:
                        self._push_step(listener, interval)
                    backoff = 0.0
                except (StoreError, OSError) as exc:
                    if self._stop.is_set():
                        break
                    self._note_stale(f"{type(exc).__name__}: {exc}")
                    if listener is not None:
                        backoff = min(BACKOFF_CAP, max(BACKOFF_START, backoff * 2))
                        self._stop.wait(backoff * (0.5 + self._random.random() / 2))
                        continue
                if listener is None:
                    self._stop.wait(interval)
        finally:
            self._listener = None
            if listener is not None:
                listener.close()

    def _push_step(self, listener: _Listener, interval: float) -> None:
        """Wait up to ``interval`` for a notification (polling the revision when due), then copy or forward."""
        poll = time.monotonic() - self._polled >= PUSH_POLL
        moved = listener.wait_for_change(interval, poll=poll) is not None
        if poll:
            self._polled = time.monotonic()
        if moved:
            self.sync_once()
        else:
            self.forward()
        age = listener.last_round_trip_age()
        if age is not None and age > STALE_AFTER:  # a hung upstream raises nothing for a while
            self._note_stale(f"the upstream has not answered for {age:.1f} s (more than {STALE_AFTER:g} s)")
        else:
            self._recovered()

    def forward(self) -> tuple[int, int]:
        """Forward local health deltas and fleet rows upstream: (outbox rows sent, instance rows written)."""
        if self._upstream_identity is None:
            self.open()
        return self._forward_health(), self._forward_instances()

    def _note_stale(self, reason: str) -> None:
        if self._stale is None:
            _log.warning("mirror.stale", error=reason, revision=self.local.revision())
        self._stale = reason

    def _recovered(self) -> None:
        if self._stale is not None:
            _log.info("mirror.recovered", revision=self.local.revision())
            self._stale = None

    @property
    def stale(self) -> str | None:
        """Why the local copy may be old (the upstream failed or went silent), or None."""
        return self._stale

    def stop(self) -> None:
        """Make :meth:`run` return after its current sync (interrupting a wait for a notification)."""
        self._stop.set()
        listener = self._listener
        if listener is not None:
            listener.abort()


def _via(info: InstanceInfo, local_url: str) -> InstanceInfo:
    return info if info.via is not None else replace(info, via=local_url)
