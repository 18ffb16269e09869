"""The library's loggers: structured events sent through stdlib :mod:`logging`, never printed.

Every module logs with ``_log = get_logger()`` and emits stable dotted events with ids as fields
(``_log.info("deployment.activated", version_id=...)``). Where they go is the host's choice:

- The events go to the stdlib logger ``rule_engine`` (or the ``name`` given), which carries only a
  :class:`logging.NullHandler`: a host that configures no logging sees nothing, not even warnings
  (no "last resort" output on stderr); a host that configures ``logging`` gets them like any other
  library's records, at the levels it chose.
- If the host configured structlog (with ``configure``), the events run through the host's
  processors and wrapper class, then reach the stdlib logger; ``structlog.testing.capture_logs()``
  works that way. Otherwise they are rendered as ``event key=value ...`` (logfmt) without colours.

The library never configures structlog or adds a handler that prints; the CLI
(``rule_engine/cli/logs.py``) is the only place that sends events to a stream (stderr).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import structlog
from structlog.typing import Processor

__all__ = ["LOGGER_NAME", "get_logger"]

LOGGER_NAME = "rule_engine"

logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())

_PLAIN: tuple[Processor, ...] = (
    structlog.stdlib.filter_by_level,  # below the stdlib logger's level: dropped before any rendering
    structlog.processors.format_exc_info,
    structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True),
)


class _Pipeline:
    """The processors of every library logger, chosen per event: the host's structlog ones if it configured any."""

    def __iter__(self) -> Iterator[Processor]:
        if structlog.is_configured():
            return iter(structlog.get_config()["processors"])
        return iter(_PLAIN)

    def __repr__(self) -> str:
        return "<rule_engine processors: the host's structlog processors if configured, else logfmt>"


_PIPELINE = _Pipeline()


def get_logger(name: str = LOGGER_NAME) -> Any:
    """A structlog logger whose events go to the stdlib logger ``name`` (silent unless the host configures logging).

    ``name`` should be ``rule_engine`` or below it (``rule_engine.stores``), so that the package's
    :class:`logging.NullHandler` applies.
    """
    return structlog.wrap_logger(logging.getLogger(name), processors=_PIPELINE)
