"""The admin port (4191): /metrics for Prometheus, /ready and /live for the kubelet's probes."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nodeagent.observe.metrics import REGISTRY

log = logging.getLogger(__name__)

MAX_HEADER = 16 * 1024


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class AdminServer:
    def __init__(self, *, host: str, port: int, ready: Callable[[], tuple[bool, str]]) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self.server: asyncio.Server | None = None
        # The listening socket: handed to a successor agent, or taken from a predecessor.
        self.sock: socket.socket | None = None

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # hostNetwork: an agent that got no socket handed over can still bind beside one
            # that is on its way out.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def start(self, sock: socket.socket | None = None) -> None:
        self.sock = sock if sock is not None else self.bind()
        self.server = await asyncio.start_server(self._serve, sock=self.sock, limit=MAX_HEADER)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.sock = None

    def route(self, method: str, path: str) -> bytes:
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n")
        if path == "/metrics":
            return _response("200 OK", generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        if path == "/live":
            return _response("200 OK", b"live\n")
        if path == "/ready":
            ok, why = self.ready()
            return _response("200 OK" if ok else "503 Service Unavailable", f"{why}\n".encode())
        return _response("404 Not Found", b"not found\n")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            words = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(words) != 3:
                writer.write(_response("400 Bad Request", b"bad request line\n"))
            else:
                writer.write(self.route(words[0], words[1]))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except (ConnectionError, OSError) as exc:
            log.debug("admin connection: %s", exc)
        finally:
            writer.close()
