"""structlog configuration for the ``rule-engine`` CLI (the only place that configures structlog).

The library only emits events (``deployment.activated``, ``rollback.automatic``, ...); applications
decide where they go. The CLI sends them to stderr, one line each, filtered by level, and restores
the previous configuration when it returns (so embedding or testing the CLI in-process leaves the
host's logging as it was).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

__all__ = ["cli_logging", "level_for"]


def level_for(verbosity: int) -> int:
    """The log level for ``-v`` counted ``verbosity`` times: errors only, then info, then debug."""
    if verbosity <= 0:
        return logging.ERROR
    if verbosity == 1:
        return logging.INFO
    return logging.DEBUG


@contextmanager
def cli_logging(level: int = logging.ERROR, stream: TextIO | None = None) -> Iterator[None]:
    """Send structlog events at ``level`` and above to ``stream`` (stderr), one line each, while inside."""
    previous: dict[str, Any] = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream if stream is not None else sys.stderr),
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**previous)
