"""Bounded waits on PostgreSQL connections, and psycopg errors said as :class:`StoreError` messages.

A server that is hung (stopped by ``SIGSTOP``, a frozen VM, a half-open network path) answers nothing
and raises nothing: libpq waits forever for a reply. ``statement_timeout`` does not help (the server
is what is stuck) and ``connect_timeout`` only covers connecting. :class:`Watchdog` is the client-side
bound: one daemon thread per store that, when a guarded call overruns its deadline, shuts the
connection's socket down, so the blocked call fails at once with a broken connection, which the
store reports as "did not answer within N s".
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from rule_engine.stores._pg_conninfo import PgTarget

__all__ = ["LAST_FAILURE", "Guard", "RecordingConnection", "Watchdog", "describe", "shutdown_socket"]

LAST_FAILURE: dict[str, tuple[float, str]] = {}  # conninfo -> (when, why) its last connection attempt failed

# psycopg_pool logs each failed reconnection attempt as a warning; without a handler Python's
# last-resort handler would print them. Applications that configure logging still receive them.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())


class RecordingConnection(psycopg.Connection[tuple[Any, ...]]):
    """A connection that remembers why connecting failed, so a pool timeout can say it."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
        try:
            conn = super().connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            text = str(exc).strip()
            LAST_FAILURE[conninfo] = (time.monotonic(), text.splitlines()[0] if text else type(exc).__name__)
            raise
        LAST_FAILURE.pop(conninfo, None)
        return conn


class Guard:
    """One guarded call: ``fired`` tells whether the watchdog cut it off."""

    __slots__ = ("fired", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.fired = False


WATCHDOG_TICK = 1.0  # an idle watchdog wakes this often, so arming a call seldom has to wake it


class Watchdog:
    """Cuts off calls on a connection that overrun their deadline (one thread, started on first use).

    Arming a call wakes the thread only when the call's deadline comes before the thread's next
    wake-up. The thread wakes at least every :data:`WATCHDOG_TICK` seconds, so a call whose timeout
    is longer than that (every store call: the store timeout is seconds) arms without a thread
    switch; once the thread sees the call armed it sleeps until the earliest deadline, so the call
    is still cut off on time.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int, Guard]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_wake = float("-inf")  # when the waiting thread wakes (-inf: not waiting; it looks before it waits)

    @contextmanager
    def guard(self, conn: psycopg.Connection[tuple[object, ...]], timeout: float) -> Iterator[Guard]:
        """Bound the calls made on ``conn`` inside the block to ``timeout`` seconds."""
        guard = Guard(timeout)
        token = next(self._tokens)
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name=f"{self._name}-watchdog", daemon=True)
                self._thread.start()
            deadline = time.monotonic() + max(timeout, 0.0)
            self._armed[token] = (deadline, conn.fileno(), guard)
            if deadline < self._next_wake:
                self._next_wake = float("-inf")
                self._cond.notify()
        try:
            yield guard
        finally:
            with self._cond:
                self._armed.pop(token, None)

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [token for token, (deadline, _, _) in self._armed.items() if deadline <= now]
                for token in due:
                    _, fd, guard = self._armed.pop(token)
                    guard.fired = True
                    shutdown_socket(fd)
                if due:
                    continue
                earliest = min((deadline for deadline, _, _ in self._armed.values()), default=now + WATCHDOG_TICK)
                self._next_wake = min(earliest, now + WATCHDOG_TICK)
                self._cond.wait(self._next_wake - now)
                self._next_wake = float("-inf")  # awake (holding the lock): the next pass sees every armed call


def shutdown_socket(fd: int) -> None:
    """Shut the socket down (both ways) without closing the descriptor libpq still owns."""
    try:
        dup = os.dup(fd)
    except OSError:
        return
    sock = socket.socket(fileno=dup)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def describe(exc: BaseException, target: PgTarget, guard: Guard | None = None) -> str:
    """One line saying what went wrong, naming the server but never the password."""
    if guard is not None and guard.fired:
        text = f"the PostgreSQL server at {target.display!r} did not answer within {target.timeout:g} s (hung or unreachable)"
    elif isinstance(exc, pg_errors.InsufficientPrivilege):
        text = f"permission denied on {target.display!r}: {_first_line(exc)} (see the role setup in docs/fleet.md)"
    elif isinstance(exc, pg_errors.RaiseException) and "append-only" in str(exc):
        text = f"refused by {target.display!r}: {_first_line(exc)}"
    elif isinstance(exc, pg_errors.QueryCanceled):
        text = f"statement cancelled on {target.display!r} after {target.timeout:g} s: {_first_line(exc)}"
    elif isinstance(exc, psycopg.OperationalError):
        text = f"cannot reach PostgreSQL at {target.display!r}: {_first_line(exc)}"
    else:
        sqlstate = getattr(exc, "sqlstate", None)
        code = f" [{sqlstate}]" if sqlstate else ""
        text = f"PostgreSQL error on {target.display!r}{code}: {type(exc).__name__}: {_first_line(exc)}"
    return target.scrub(text)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__
