"""The PostgreSQL store's watchdog: a call that overruns its deadline is cut off on time, and arming
a call with a long timeout does not wake the watchdog's thread (no thread switch per statement)."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("psycopg")

from rule_engine.stores import _pg_session
from rule_engine.stores._pg_session import Watchdog


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()


def _cut_off(peer: socket.socket, within: float) -> bool:
    """Whether ``peer``'s other end was shut down within ``within`` seconds (it then reads EOF)."""
    peer.settimeout(within)
    try:
        return peer.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False


def test_a_short_call_armed_while_a_long_one_waits_is_cut_off_at_its_own_deadline() -> None:
    watchdog = Watchdog("test")
    long_side, long_peer = socket.socketpair()
    short_side, short_peer = socket.socketpair()
    try:
        with watchdog.guard(_Conn(long_side), 30.0) as long_guard:
            time.sleep(0.05)  # the thread now sleeps until its tick, long after the short deadline below
            started = time.monotonic()
            with watchdog.guard(_Conn(short_side), 0.1) as short_guard:
                assert _cut_off(short_peer, 5.0)
                took = time.monotonic() - started
            assert short_guard.fired
            assert not long_guard.fired
            assert took < 2.0  # its own deadline (0.1 s), not the long call's nor the watchdog's tick
            assert not _cut_off(long_peer, 0.01)
    finally:
        watchdog.close()
        for s in (long_side, long_peer, short_side, short_peer):
            s.close()


def test_arming_calls_with_a_timeout_longer_than_the_tick_does_not_wake_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watchdog = Watchdog("test")
    side, peer = socket.socketpair()
    wakes: list[float] = []
    real_notify = watchdog._cond.notify

    def counting_notify(n: int = 1) -> None:
        wakes.append(time.monotonic())
        real_notify(n)

    monkeypatch.setattr(watchdog._cond, "notify", counting_notify)
    try:
        with watchdog.guard(_Conn(side), 5.0):
            pass  # starts the thread (and may wake it once)
        time.sleep(0.05)
        first = len(wakes)
        for _ in range(200):
            with watchdog.guard(_Conn(side), 5.0):
                pass
        assert len(wakes) == first
        assert _pg_session.WATCHDOG_TICK < 5.0
    finally:
        watchdog.close()
        side.close()
        peer.close()
