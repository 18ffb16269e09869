"""What the dashboard shows, computed at most once per interval and streamed as server-sent events.

A :class:`DashboardFeed` builds one JSON payload per deployment (status, history, audit, health
series, which operations exist) and caches it for ``interval`` seconds or until the store revision
changes, so many open dashboards cost one computation. :func:`event_stream` turns it into an SSE
stream that ends after ``max_events`` events or ``max_secs`` seconds (the browser's EventSource
reconnects by itself), so no stream lives forever.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from rule_engine.clock import Clock, iso
from rule_engine.observability.metrics import DeliverySource
from rule_engine.observability.series import HealthSeries
from rule_engine.observability.views import history_view, infos, status_view
from rule_engine.server.operations import OPERATIONS

if TYPE_CHECKING:
    from rule_engine.deployment.manager import DeploymentManager

__all__ = ["DashboardFeed", "event_stream", "webhook_state"]

AUDIT_SHOWN = 20


class DashboardFeed:
    """The dashboard payload of each deployment, cached for ``interval`` seconds (or a new revision)."""

    def __init__(
        self,
        managers: Mapping[str, DeploymentManager],
        store_url: str,
        clock: Clock,
        interval: float = 1.0,
        extra: Callable[[str], dict[str, Any]] | None = None,
    ) -> None:
        self.managers = managers
        self.store_url = store_url
        self.clock = clock
        self.interval = interval
        self._extra = extra
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, int, dict[str, Any]]] = {}
        self._series = {name: HealthSeries(manager.config.thresholds.window_secs) for name, manager in managers.items()}

    def payload(self, name: str) -> dict[str, Any]:
        """The current payload of deployment ``name`` (from the cache when fresh)."""
        manager = self.managers[name]
        revision = manager.snapshot.revision
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None and cached[1] == revision and time.monotonic() - cached[0] < self.interval:
                return cached[2]
            built = self._build(name, manager)
            self._cache[name] = (time.monotonic(), revision, built)
            return built

    def _build(self, name: str, manager: DeploymentManager) -> dict[str, Any]:
        now = self.clock.now()
        kept = infos(manager)
        series = self._series[name]
        series.sample(now, kept)
        history = history_view(manager, AUDIT_SHOWN, kept)
        payload: dict[str, Any] = {
            "deployment": name,
            "now": now,
            "time": iso(now),
            "revision": manager.snapshot.revision,
            "stale": manager.stale,
            "status": status_view(manager, self.store_url, kept),
            "audit": history["audit"],
            "window_secs": series.window_secs,
            "series": series.points(),
            "operations": [
                {"name": op.name, "summary": op.summary, "available": op.available(manager)} for op in OPERATIONS
            ],
        }
        if self._extra is not None:
            payload.update(self._extra(name))
        return payload


def webhook_state(notifier: DeliverySource) -> dict[str, Any]:
    """Webhook delivery state: the recent deliveries and, per webhook, counts by outcome and the queue depth."""
    counts: dict[str, dict[str, int]] = {}
    for (webhook, outcome), count in sorted(notifier.delivery_counts().items()):
        counts.setdefault(webhook, {})[outcome] = count
    return {
        "webhooks": notifier.deliveries(),
        "webhook_state": {"queue_depth": notifier.queue_depth(), "counts": counts},
    }


async def event_stream(
    feed: DashboardFeed,
    name: str,
    is_disconnected: Callable[[], Any],
    *,
    max_events: int,
    max_secs: float,
    poll_secs: float = 0.25,
) -> AsyncIterator[bytes]:
    """SSE frames of ``name``'s payload: one now, then one whenever it changes (bounded in count and time)."""
    started = time.monotonic()
    sent = 0
    last: str | None = None
    yield b"retry: 2000\n\n"
    while sent < max_events and time.monotonic() - started < max_secs:
        payload = await run_in_threadpool(feed.payload, name)
        text = json.dumps(payload, default=str, separators=(",", ":"))
        if text != last:
            last = text
            sent += 1
            yield f"event: status\nid: {sent}\ndata: {text}\n\n".encode()
        if sent >= max_events or await is_disconnected():
            return
        await asyncio.sleep(poll_secs)
