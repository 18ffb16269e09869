"""The decision log's writer: JSONL receipts of sampled decisions, masked, with size-based rotation.

The request thread only enqueues (:mod:`rule_engine.serving.decisionlog`); :class:`DecisionLogWriter`
runs one background thread, started explicitly, that turns each queued decision into one JSON line::

    {"time": 1767225600.25, "deployment": "gateway", "version": "gateway@2.0.0+1a2b.7",
     "role": "candidate", "strategy": "canary", "stage": 1, "share_bp": 1000, "revision": 12,
     "bucket": 734, "key": "u-42", "event": {...}, "decision": "deny", "rule_id": "block-tor",
     "reason": "...", "error": null, "latency_us": 2.1}

``latency_us`` is null for an error decision on a call that was not timed (the engine times one call
in 16, and every tapped one).

A record carries ``event`` and ``key``, so ``rule-engine replay`` and ``preview`` read a log as it is.
The event is copied through ``allow`` (keep only these paths) then ``mask`` (remove these paths),
OPA's decision-log masking: dotted paths, ``*`` for any member at that level (``"card.*"``). The key is
written as is (``key_mode="plain"``), as ``key_hash`` (``"hash"``: BLAKE2b of its JSON text, keyed by
``key_salt``), or not at all (``"omit"``); mask the event's key field too when keys are personal data.

The file rotates before a write would take it past ``max_bytes``: ``path`` becomes ``path.1``, ``path.1``
becomes ``path.2``... and the oldest past ``backups`` is deleted. A failing sink loses that batch and is
counted (:attr:`DecisionLogWriter.write_errors`), never raised; a slow one only fills the queue, whose
overflow the hot path drops and counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from rule_engine.serving.decisionlog import DEFAULT_QUEUE_SIZE, DecisionLog, LoggedDecision, Taps
from rule_engine.serving.routing import Salt, hash_key
from rule_engine.serving.snapshot import ServingCell, SnapshotSource

__all__ = [
    "DecisionLogWriter",
    "RotatingFile",
    "Sink",
    "mask_event",
    "start_decision_log",
    "stop_decision_log",
]

KEY_MODES = ("plain", "hash", "omit")
_BATCH = 512
_POLL_SECS = 0.1
_TreeNode = dict[str, Any]
Describe = Callable[[], tuple[str | None, int | None]]


class Sink(Protocol):
    """Where the writer's lines go."""

    def write(self, text: str) -> None:
        """Append ``text`` (whole lines)."""
        ...

    def close(self) -> None:
        """Release the sink."""
        ...


class RotatingFile:
    """A JSONL file rotated by size: ``path``, ``path.1`` ... ``path.<backups>`` (newest first)."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 64 * 1024 * 1024, backups: int = 5) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = self.path.open("ab")
        self._size = self._file.tell()

    def write(self, text: str) -> None:
        """Append ``text``, rotating first when it would not fit (a larger batch goes in a fresh file)."""
        data = text.encode("utf-8", "surrogatepass")
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def close(self) -> None:
        """Close the current file."""
        self._file.close()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._file = self.path.open("ab")
        self._size = 0


def _tree(paths: Iterable[str]) -> _TreeNode:
    """Dotted paths as a tree of parts; a leaf is ``{}`` (the whole value below it)."""
    root: _TreeNode = {}
    for path in paths:
        if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
            raise ValueError(f"a mask/allow path must be a dotted name such as 'user.email', got {path!r}")
        parts = path.split(".")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if child is not None and not child:
                break  # a shorter path already covers this one
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = {}
    return root


def _allowed(value: Any, tree: _TreeNode) -> Any:
    if not tree:
        return value
    if not isinstance(value, Mapping):
        return None
    kept: dict[str, Any] = {}
    for name, item in value.items():
        sub = tree.get(name, tree.get("*"))
        if sub is not None:
            kept[name] = _allowed(item, sub)
    return kept


def _masked(value: Any, tree: _TreeNode) -> Any:
    if not isinstance(value, Mapping):
        return value
    kept: dict[str, Any] = {}
    for name, item in value.items():
        sub = tree.get(name, tree.get("*"))
        if sub is None:
            kept[name] = item
        elif sub:
            kept[name] = _masked(item, sub)
    return kept


def mask_event(event: Any, *, mask: Iterable[str] = (), allow: Iterable[str] | None = None) -> Any:
    """A copy of ``event`` with only the ``allow`` paths (all when None), then without the ``mask`` paths."""
    value = _allowed(event, _tree(allow)) if allow is not None else event
    return _masked(value, _tree(mask))


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class DecisionLogWriter:
    """Consumes a :class:`DecisionLog` on one background thread and writes JSONL receipts to a sink.

    Nothing starts in the constructor: call :meth:`start` (or use it as a context manager) and
    :meth:`stop`, which writes what is still queued (at most the queue's size) before returning.
    ``describe`` gives the deployment's current (strategy, stage); it is called on the writer thread
    when the serving revision changes.
    """

    def __init__(
        self,
        log: DecisionLog,
        sink: Sink,
        *,
        mask: Iterable[str] = (),
        allow: Iterable[str] | None = None,
        key_mode: str = "plain",
        key_salt: str = "",
        describe: Describe | None = None,
    ) -> None:
        if key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {', '.join(KEY_MODES)}, got {key_mode!r}")
        self.log = log
        self.sink = sink
        self._mask = _tree(mask)
        self._allow = _tree(allow) if allow is not None else None
        self._key_mode = key_mode
        self._key_salt = key_salt.encode("utf-8")[:64]
        self._describe = describe
        self._described: tuple[int, tuple[str | None, int | None]] = (-1, (None, None))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.write_errors = 0  # records lost because the sink raised
        self.unserialisable = 0  # records written without their event (it could not be read as JSON)

    def __enter__(self) -> DecisionLogWriter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is not None:
            raise RuntimeError("the decision log writer is already started")
        self._thread = threading.Thread(target=self._run, name="rule-engine-decision-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the thread and close the sink."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()
        with contextlib.suppress(Exception):  # nothing is left to lose
            self.sink.close()
        self._thread = None

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        """The log's counters: sampled, dropped, pending, written, write_errors, unserialisable."""
        return {
            "sampled": self.log.sampled,
            "dropped": self.log.dropped,
            "pending": self.log.pending,
            "written": self.written,
            "write_errors": self.write_errors,
            "unserialisable": self.unserialisable,
        }

    def flush(self) -> None:
        """Write every queued decision now (on the calling thread)."""
        while self._write_batch(self.log.take(0)):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._write_batch(self.log.take(_POLL_SECS))

    def _write_batch(self, first: LoggedDecision | None) -> bool:
        if first is None:
            return False
        items = [first]
        while len(items) < _BATCH:
            item = self.log.take(0)
            if item is None:
                break
            items.append(item)
        lines = [self.line(item) for item in items]
        try:
            self.sink.write("".join(lines))
        except Exception:
            self.write_errors += len(lines)
        else:
            self.written += len(lines)
        return True

    def line(self, item: LoggedDecision) -> str:
        """The JSON line of one queued decision (never raises)."""
        try:
            return json.dumps(self.record(item), default=_json_default, separators=(",", ":")) + "\n"
        except Exception:
            self.unserialisable += 1
            record = self.record(item, with_event=False)
            return json.dumps(record, default=str, separators=(",", ":")) + "\n"

    def record(self, item: LoggedDecision, *, with_event: bool = True) -> dict[str, Any]:
        """The receipt of one queued decision, as a JSON-ready dict."""
        snapshot, decision, event = item.snapshot, item.decision, item.event
        strategy, stage = self._stage(snapshot.revision)
        key = item.key
        if key is None and isinstance(event, Mapping):
            try:
                key = event.get(self.log.key_field)
            except Exception:
                key = None
        request_hash = hash_key(key, snapshot.seed)
        bucket = None
        if request_hash is not None and snapshot.candidate is not None:  # multiplier 0: routing algorithm 2
            algorithm = 1 if snapshot.multiplier else 2
            bucket = Salt("", snapshot.multiplier, snapshot.offset, algorithm, snapshot.seed).bucket(request_hash)
        record: dict[str, Any] = {
            "time": item.time,
            "deployment": self.log.deployment,
            "version": item.table.version_id,
            "role": item.role,
            "strategy": strategy,
            "stage": stage,
            "share_bp": snapshot.share_bp,
            "revision": snapshot.revision,
            "bucket": bucket,
        }
        if self._key_mode == "plain":
            record["key"] = key
        elif self._key_mode == "hash" and key is not None:
            text = json.dumps(key, default=str, sort_keys=True).encode("utf-8", "surrogatepass")
            record["key_hash"] = hashlib.blake2b(text, key=self._key_salt, digest_size=16).hexdigest()
        if with_event:
            shown = _allowed(event, self._allow) if self._allow is not None else event
            record["event"] = _masked(shown, self._mask)
        else:
            record["event"] = None
        record.update(
            decision=decision.decision,
            rule_id=decision.rule_id,
            reason=decision.reason,
            error=decision.error,
            latency_us=None if item.latency_ns is None else item.latency_ns / 1000,
        )
        return record

    def _stage(self, revision: int) -> tuple[str | None, int | None]:
        seen, described = self._described
        if self._describe is None or seen == revision:
            return described
        try:
            described = self._describe()
        except Exception:
            described = (None, None)
        self._described = (revision, described)
        return described


def _cell_of(source: SnapshotSource | ServingCell) -> ServingCell:
    return source if isinstance(source, ServingCell) else source.serving_cell


def _manager_stage(source: Any) -> Describe | None:
    """(strategy, stage) from a manager's public status methods, if it has them."""
    if not hasattr(source, "get_rollout_status"):
        return None

    def describe() -> tuple[str | None, int | None]:
        rollout = source.get_rollout_status()
        if rollout is not None:
            return rollout.strategy, rollout.stage
        active = source.get_active_version_id()
        info = source.get_deployment_info(active) if active else None
        return (info.strategy.kind if info is not None else None), None

    return describe


def start_decision_log(
    source: SnapshotSource | ServingCell,
    path: str | os.PathLike[str] | Sink,
    *,
    sample_rate: float = 0.01,
    deployment: str = "default",
    mask: Iterable[str] = (),
    allow: Iterable[str] | None = None,
    key_mode: str = "plain",
    key_salt: str = "",
    key_field: str = "user_id",
    max_bytes: int = 64 * 1024 * 1024,
    backups: int = 5,
    max_queue: int = DEFAULT_QUEUE_SIZE,
) -> DecisionLogWriter:
    """Log a sample of ``source``'s decisions (a manager or its serving cell) to ``path``; started.

    Everything is validated before anything is attached. ``stop_decision_log`` detaches and stops it.
    """
    log = DecisionLog(deployment, sample_rate=sample_rate, max_queue=max_queue, key_field=key_field)
    sink: Sink = (
        RotatingFile(path, max_bytes=max_bytes, backups=backups) if isinstance(path, str | os.PathLike) else path
    )
    writer = DecisionLogWriter(
        log, sink, mask=mask, allow=allow, key_mode=key_mode, key_salt=key_salt, describe=_manager_stage(source)
    )
    writer.start()
    cell = _cell_of(source)
    shadow = cell.taps.shadow if cell.taps is not None else None
    cell.attach(Taps(log, shadow))
    return writer


def stop_decision_log(source: SnapshotSource | ServingCell, writer: DecisionLogWriter) -> None:
    """Detach ``writer``'s log from ``source`` (a shadow stays attached) and stop the writer."""
    cell = _cell_of(source)
    taps = cell.taps
    if taps is not None and taps.log is writer.log:
        cell.attach(Taps(None, taps.shadow))
    writer.stop()
