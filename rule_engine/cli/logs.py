"""Log output of the ``rule-engine`` CLI (the only place that configures structlog or adds a handler).

The library only emits events (``deployment.activated``, ``rollback.automatic``, ...) through the
stdlib logger ``rule_engine`` (:mod:`rule_engine.logs`); applications decide where they go. The CLI
sends them to stderr, one line each, filtered by level, and restores the previous configuration
(structlog's and the ``rule_engine`` logger's) when it returns, so embedding or testing the CLI
in-process leaves the host's logging as it was.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from rule_engine.logs import LOGGER_NAME

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
    """Send library events at ``level`` and above to ``stream`` (stderr), one line each, while inside."""
    out = stream if stream is not None else sys.stderr
    was_configured = structlog.is_configured()
    previous: dict[str, Any] = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    target = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (target.level, target.propagate)
    target.addHandler(handler)
    target.setLevel(level)
    target.propagate = False  # the CLI's own output; a host's root handlers would print it twice
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(saved[0])
        target.propagate = saved[1]
        if was_configured:
            structlog.configure(**previous)
        else:
            structlog.reset_defaults()
