"""Watching bundle sources: a directory of bundle files, or an HTTP URL polled with ETags.

:class:`DirectorySource` reads every ``*.json`` file directly in a directory (names starting with a
dot are skipped, so editors' temporary files, ``.tmp`` files renamed into place and Kubernetes'
``..data`` / ``..2024_...`` entries are never read as bundles). Files are read through their path,
so a ConfigMap's ``..data`` symlink swap shows the new content at once; an atomic rename is just a
changed file. :class:`UrlSource` GETs a bundle with ``If-None-Match`` and remembers the ``ETag``
(OPA's bundle polling); a 304 costs nothing.

:class:`BundleWatcher` takes what a source yields and deploys each new or changed bundle with the
given strategy: content already deployed (or already refused) is skipped, an invalid bundle is
reported once and never deployed, and a deploy refused because a rollout is in progress is retried at
the next scan. It never raises for a bad file or an unreachable URL: it reports and goes on.
:func:`watch_directory` runs it over ``watchfiles`` (debounced) until stopped.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rule_engine.bundle.models import DEFAULT_LIMITS, parse_bundle
from rule_engine.bundle.signing import find_signature
from rule_engine.control.strategies import Scheduled, Strategy
from rule_engine.errors import BundleValidationError, RolloutInProgressError, RuleEngineError

if TYPE_CHECKING:
    from rule_engine.deployment.manager import DeploymentManager

__all__ = ["BundleWatcher", "DirectorySource", "Found", "Report", "UrlSource", "watch_directory"]


@dataclass(frozen=True, slots=True)
class Found:
    """One bundle a source holds now: where it came from, its bytes, and the path of its signature."""

    source: str
    data: bytes
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """What the watcher did with one source: ``deployed``, ``invalid``, ``retry`` or ``error``."""

    kind: str
    source: str
    message: str
    version_id: str | None = None


class DirectorySource:
    """The ``*.json`` files directly in ``directory`` (hidden names skipped; symlinks followed)."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = DEFAULT_LIMITS.max_bytes) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def scan(self) -> Iterator[Found | Report]:
        """Every bundle file now, in name order (an unreadable or oversized file is a report)."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.directory))
        except OSError as exc:
            yield Report("error", str(self.directory), f"cannot list the directory: {exc.strerror or exc}")
            return
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            path = self.directory / name
            try:
                if not path.is_file():
                    continue
                with path.open("rb") as file:
                    data = file.read(self.max_bytes + 1)
            except OSError as exc:
                yield Report("error", str(path), f"cannot read: {exc.strerror or exc}")
                continue
            if len(data) > self.max_bytes:
                yield Report("invalid", str(path), f"larger than {self.max_bytes} bytes")
                continue
            yield Found(str(path), data, path)


class UrlSource:
    """A bundle at an HTTP(S) URL, fetched with ``If-None-Match`` once an ``ETag`` is known."""

    def __init__(self, url: str, *, timeout: float = 10.0, max_bytes: int = DEFAULT_LIMITS.max_bytes) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--url must be http:// or https://, got {url!r}")
        self.url = url
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.etag: str | None = None

    def scan(self) -> Iterator[Found | Report]:
        """The bundle if it changed since the last fetch (nothing on a 304)."""
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        if self.etag is not None:
            request.add_header("If-None-Match", self.etag)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read(self.max_bytes + 1)
                etag = response.headers.get("ETag")
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code != 304:
                yield Report("error", self.url, f"HTTP {exc.code}")
            return
        except (OSError, ValueError) as exc:
            yield Report("error", self.url, f"cannot fetch: {type(exc).__name__}: {exc}")
            return
        if len(data) > self.max_bytes:
            yield Report("invalid", self.url, f"larger than {self.max_bytes} bytes")
            return
        self.etag = etag
        yield Found(self.url, data)


Source = DirectorySource | UrlSource


class BundleWatcher:
    """Deploys new or changed bundles from a source with one strategy; reports each outcome."""

    def __init__(
        self,
        manager: DeploymentManager,
        strategy: Strategy,
        *,
        actor: str = "watch",
        supersede: bool = False,
        report: Callable[[Report], Any] | None = None,
    ) -> None:
        self.manager = manager
        self.strategy = strategy
        self.actor = actor
        self.supersede = supersede
        self._report = report
        self._done: dict[str, str] = {}  # source -> sha256 of the content deployed or refused

    def scan(self, source: Source) -> list[Report]:
        """Look at the source once; deploy what is new; return the reports (also sent to ``report``)."""
        reports: list[Report] = []
        for item in source.scan():
            outcome = item if isinstance(item, Report) else self._consider(item)
            if outcome is not None:
                reports.append(outcome)
                if self._report is not None:
                    self._report(outcome)
        return reports

    def _consider(self, found: Found) -> Report | None:
        content = hashlib.sha256(found.data).hexdigest()
        if self._done.get(found.source) == content:
            return None
        try:
            bundle = parse_bundle(found.data)
        except BundleValidationError as exc:
            self._done[found.source] = content  # reported once; a fixed file is new content again
            first = exc.problems[0] if exc.problems else exc
            return Report("invalid", found.source, f"invalid bundle, not deployed: {first}")
        if bundle.digest in self._serving_digests():
            self._done[found.source] = content
            return None
        try:
            signature = find_signature(found.path) if found.path is not None and self.manager.config.trust else None
            version_id = self.manager.prepare_deployment(
                bundle, self.strategy, deployed_by=self.actor, signature=signature
            )
            if not isinstance(self.strategy, Scheduled):
                self.manager.activate_deployment(version_id, actor=self.actor, supersede=self.supersede)
        except BundleValidationError as exc:
            self._done[found.source] = content
            first = exc.problems[0] if exc.problems else exc
            return Report("invalid", found.source, f"refused, not deployed: {first}")
        except RolloutInProgressError as exc:
            return Report("retry", found.source, f"{exc}; will retry at the next scan")
        except (RuleEngineError, OSError) as exc:
            return Report("error", found.source, f"{type(exc).__name__}: {exc}")
        self._done[found.source] = content
        return Report("deployed", found.source, f"deployed as {version_id}", version_id)

    def _serving_digests(self) -> set[str]:
        ids = {self.manager.get_active_version_id()}
        rollout = self.manager.get_rollout_status()
        if rollout is not None:
            ids.add(rollout.version_id)
        infos = (self.manager.get_deployment_info(v) for v in ids if v is not None)
        return {info.digest for info in infos if info is not None}


def watch_directory(
    watcher: BundleWatcher,
    source: DirectorySource,
    stop: threading.Event,
    *,
    debounce_ms: int = 500,
    rescan_secs: float = 30.0,
) -> None:
    """Scan now, then after every (debounced) change in the directory, and every ``rescan_secs``, until ``stop``."""
    import watchfiles

    watcher.scan(source)
    for _changes in watchfiles.watch(
        source.directory,
        debounce=debounce_ms,
        stop_event=stop,
        rust_timeout=int(rescan_secs * 1000),
        yield_on_timeout=True,
        recursive=True,  # ConfigMap mounts change inside ..2024_... directories
        watch_filter=None,
        raise_interrupt=False,
    ):
        if stop.is_set():
            return
        watcher.scan(source)
