"""A keep-alive HTTP/1.1 GET client over asyncio streams: a pool of idle connections, a deadline.

Every failure is translated into RequestTimedOut or ConnectionFailed, so the vote-bot can count
each request exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from emojivoto import http1


class RequestFailed(Exception):
    """The request got no complete HTTP response."""


class RequestTimedOut(RequestFailed):
    pass


class ConnectionFailed(RequestFailed):
    pass


class _StaleConnection(Exception):
    # A reused connection that the server had already closed: nothing was answered on it.
    pass


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


class Http1Client:
    """GETs against one host:port; connections are reused while the server keeps them alive."""

    def __init__(
        self, host: str, port: int, *, host_header: str, timeout_s: float, idle_s: float = 2.0
    ) -> None:
        self._host = host
        self._port = port
        self._host_header = host_header
        self._timeout_s = timeout_s
        # Shorter than the usual server keep-alive timeouts (uvicorn: 5 s), so a pooled
        # connection is rarely one the server is closing at that very moment.
        self._idle_s = idle_s
        self._idle: list[_Connection] = []
        self.connections_opened = 0
        self.stale_retries = 0

    async def get(self, target: str) -> Response:
        request = http1.get_request(target, host=self._host_header)
        conn = self._take_idle()
        try:
            async with asyncio.timeout(self._timeout_s):
                if conn is not None:
                    try:
                        return await self._exchange(conn, request, reused=True)
                    except _StaleConnection:
                        # Never answered, so the server never saw it: send it once more on a
                        # fresh connection rather than count a failure nobody else would see.
                        conn.close()
                        self.stale_retries += 1
                conn = await self._open()
                return await self._exchange(conn, request, reused=False)
        except TimeoutError as exc:
            if conn is not None:
                conn.close()
            raise RequestTimedOut(f"no response within {self._timeout_s} s") from exc
        except (OSError, EOFError, http1.MalformedResponse) as exc:
            if conn is not None:
                conn.close()
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        self.connections_opened += 1
        return _Connection(reader, writer)

    async def _exchange(self, conn: _Connection, request: bytes, *, reused: bool) -> Response:
        parser = http1.ResponseParser()
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            while True:
                data = await conn.reader.read(65536)
                if not data:
                    raise EOFError("connection closed before the response was complete")
                if parser.feed(data):
                    break
        except (OSError, EOFError):
            if reused and parser.received == 0:
                raise _StaleConnection() from None
            raise
        assert parser.status is not None
        if parser.keep_alive:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return Response(parser.status, parser.body)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # most recently used first, so spare ones age out
            if now - conn.idle_since < self._idle_s and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
