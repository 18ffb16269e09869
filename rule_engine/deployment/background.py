"""A stoppable background thread that calls one function every interval (controller, follower)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rule_engine.logs import get_logger

__all__ = ["BackgroundLoop"]

_log = get_logger()


class BackgroundLoop:
    """A stoppable background thread calling ``step`` every ``interval`` seconds."""

    def __init__(self, name: str, interval: float, step: Callable[[], None]) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.interval = interval
        self._step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:
                _log.error(
                    "background.step_failed",
                    thread=self._thread.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def __enter__(self) -> BackgroundLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
