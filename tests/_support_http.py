"""A scripted HTTP receiver on 127.0.0.1 for webhook, gate and watcher tests (bounded in time)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANDLER_WAIT_SECS = 10.0  # a blocked handler gives up after this long, so no test can hang


@dataclass
class Received:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    """What the receiver answers: status, body, extra headers; ``block`` waits for the test to release it."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    block: threading.Event | None = None


class Receiver:
    """Answers each request with the next scripted reply (the last one repeats)."""

    def __init__(self, *replies: Reply | Callable[[Received], Reply]) -> None:
        self.replies = list(replies) or [Reply()]
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                got = Received(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                with receiver.arrived:
                    receiver.received.append(got)
                    index = min(len(receiver.received), len(receiver.replies)) - 1
                    receiver.arrived.notify_all()
                scripted = receiver.replies[index]
                reply = scripted(got) if callable(scripted) else scripted
                if reply.block is not None:
                    reply.block.wait(HANDLER_WAIT_SECS)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_POST = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def wait_for(self, count: int, timeout: float = HANDLER_WAIT_SECS) -> list[Received]:
        """Wait (bounded) until ``count`` requests arrived; returns them."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
