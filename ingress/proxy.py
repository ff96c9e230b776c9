"""The edge's HTTP/1.1 proxy: each client request is matched against the Ingress rules and sent
to its backend Service's cluster address, over kept-alive upstream connections.

h11 parses both sides (as in the agent's L7 path); this module moves bytes. The upstream
connection goes to the Service VIP from this (meshed) pod, so the node agent captures it and
carries it over mTLS with the ingress pod's identity: the mesh sees ingress -> backend."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from ingress.state import Refusal, Snapshot, Upstream

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
HEADER_TIMEOUT = 60.0  # an idle client connection between requests
UPSTREAM_TIMEOUT = 300.0  # the backend's silence while a response is due
IDLE_PER_UPSTREAM = 32
# Per-hop headers (RFC 9110 7.6.1) a proxy must not pass on; h11 frames bodies itself.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
}
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Stats:
    requests: int = 0
    upstream_connections: int = 0  # opened; requests minus this were sent on kept-alive ones
    by_status: dict[int, int] = field(default_factory=dict)


class Edge:
    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        connect: Callable[[str, int], Any] = asyncio.open_connection,
    ) -> None:
        self.snapshot = snapshot
        self.connect = connect
        self.idle: dict[tuple[str, int], list[Streams]] = {}
        self.stats = Stats()
        self.active = 0  # requests being answered
        # Shutting down: answers say `connection: close` so clients go to another replica.
        self.draining = False

    def close(self) -> None:
        for pool in self.idle.values():
            for _, w in pool:
                w.close()
        self.idle.clear()

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, scheme: str
    ) -> None:
        """One client connection, request after request while both sides keep it alive."""
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if isinstance(peer, tuple) else ""
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next(conn, reader, HEADER_TIMEOUT)
                if not isinstance(request, h11.Request):
                    return
                self.active += 1
                try:
                    keep = await self._one(conn, reader, writer, request, client_ip, scheme)
                finally:
                    self.active -= 1
                done = conn.our_state is h11.DONE and conn.their_state is h11.DONE
                if self.draining or not keep or not done:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _answer(conn, writer, e.error_status_hint, f"bad request: {e}")
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    async def _one(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        client_ip: str,
        scheme: str,
    ) -> bool:
        start = time.monotonic()
        target = request.target.decode("latin-1")
        host = _host(request, target)
        path = target.split("?", 1)[0]
        if "://" in path:  # absolute-form: route on its path
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        match, where = self.snapshot().route(host, path)
        self.stats.requests += 1
        if request.method == b"CONNECT" or _header(request.headers, b"upgrade"):
            where = Refusal(501, "Upgrade and CONNECT are not supported by nodemesh-ingress")
        if isinstance(where, Refusal):
            await _drain(conn, reader)
            await _answer(conn, writer, where.status, where.reason)
            self._log(request, host, where.status, start, where.reason)
            return where.status != 501
        headers = _forwarded(request.headers, client_ip=client_ip, scheme=scheme, host=host)
        if (_header(request.headers, b"expect") or b"").lower() == b"100-continue":
            # The body is read before the backend is asked: let the client send it now.
            headers = [(n, v) for n, v in headers if n.lower() != b"expect"]
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        upstream_request = h11.Request(method=request.method, target=target, headers=headers)
        status, keep = await self._forward(conn, reader, writer, upstream_request, where)
        self._log(request, host, status, start, f"-> {where.name} ({match.rule if match else ''})")
        return keep

    async def _forward(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        up: Upstream,
    ) -> tuple[int, bool]:
        """Send `request` and its body to `up`; stream the answer back. (status, client keep)."""
        key = (up.address, up.port)
        body_sent = False
        for attempt in range(2):
            streams, reused = await self._get(key)
            if streams is None:
                await _drain(conn, reader)
                await _answer(conn, writer, 502, f"{up.name}: cannot connect")
                return 502, True
            ureader, uwriter = streams
            uconn = h11.Connection(h11.CLIENT)
            try:
                uwriter.write(uconn.send(request))
                while conn.their_state is h11.SEND_BODY:
                    event = await _next(conn, reader, HEADER_TIMEOUT)
                    if isinstance(event, h11.Data):
                        body_sent = True
                        uwriter.write(uconn.send(h11.Data(data=event.data)))
                        await uwriter.drain()
                    elif not isinstance(event, h11.EndOfMessage):
                        raise h11.RemoteProtocolError("request body ended early")
                uwriter.write(uconn.send(h11.EndOfMessage()))
                await uwriter.drain()
                head = await _next(uconn, ureader, UPSTREAM_TIMEOUT)
                while isinstance(head, h11.InformationalResponse):
                    head = await _next(uconn, ureader, UPSTREAM_TIMEOUT)
                if not isinstance(head, h11.Response):
                    raise ConnectionError("the backend closed before answering")
            except (OSError, ConnectionError, h11.LocalProtocolError, asyncio.IncompleteReadError,
                    TimeoutError, h11.RemoteProtocolError) as e:  # fmt: skip
                uwriter.transport.abort()
                if conn.their_state in (h11.SEND_BODY, h11.ERROR):
                    return 400, False  # the client's own request broke off
                # A kept-alive connection the backend had closed: the request is sent again on
                # a new one, unless its body was already read from the client.
                if reused and attempt == 0 and not body_sent:
                    continue
                await _answer(conn, writer, 502, f"{up.name}: {e or type(e).__name__}")
                return 502, True
            break
        headers = _strip(head.headers)
        if self.draining:
            headers.append((b"connection", b"close"))
        writer.write(conn.send(h11.Response(
            status_code=head.status_code, headers=headers, reason=head.reason
        )))  # fmt: skip
        try:
            while True:
                event = await _next(uconn, ureader, UPSTREAM_TIMEOUT)
                if isinstance(event, h11.Data):
                    writer.write(conn.send(h11.Data(data=event.data)))
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    break
                else:
                    raise ConnectionError("the backend ended the response early")
        except (OSError, ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError,
                TimeoutError):  # fmt: skip
            uwriter.transport.abort()
            return head.status_code, False  # the client sees the response cut: close it
        if uconn.our_state is h11.DONE and uconn.their_state is h11.DONE:
            self._put(key, (ureader, uwriter))
        else:
            uwriter.close()
        return head.status_code, True

    async def _get(self, key: tuple[str, int]) -> tuple[Streams | None, bool]:
        pool = self.idle.get(key)
        while pool:
            r, w = pool.pop()
            if not w.is_closing() and not r.at_eof():
                return (r, w), True
            w.close()
        try:
            streams = await asyncio.wait_for(self.connect(*key), 10)
        except (OSError, TimeoutError) as e:
            log.warning("cannot connect to %s:%s: %s", *key, e)
            return None, False
        self.stats.upstream_connections += 1
        return streams, False

    def _put(self, key: tuple[str, int], streams: Streams) -> None:
        pool = self.idle.setdefault(key, [])
        if len(pool) >= IDLE_PER_UPSTREAM:
            streams[1].close()
        else:
            pool.append(streams)

    def _log(self, request: h11.Request, host: str, status: int, start: float, note: str) -> None:
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        log.debug(
            "%s %s %s -> %d in %.1f ms %s",
            request.method.decode("latin-1"),
            host,
            request.target.decode("latin-1"),
            status,
            (time.monotonic() - start) * 1000,
            note,
        )


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(READ_CHUNK), timeout))
            continue
        if event is h11.PAUSED:
            return None
        return event


async def _drain(conn: h11.Connection, reader: asyncio.StreamReader) -> None:
    """Read (and drop) the rest of a request that will not be forwarded."""
    while conn.their_state is h11.SEND_BODY:
        event = await _next(conn, reader, HEADER_TIMEOUT)
        if event is None or isinstance(event, h11.ConnectionClosed):
            return


async def _answer(
    conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: str
) -> None:
    body = (text + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    if conn.their_state is not h11.DONE:
        headers.append((b"connection", b"close"))
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _header(headers: Any, name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return bytes(v)
    return None


def _host(request: h11.Request, target: str) -> str:
    if "://" in target:
        return target.split("://", 1)[1].partition("/")[0]
    value = _header(request.headers, b"host")
    return value.decode("latin-1") if value else ""


def _strip(headers: Any) -> list[tuple[bytes, bytes]]:
    named = {v.strip().lower() for n, v in headers if n.lower() == b"connection"}
    listed = {t.strip() for v in named for t in v.split(b",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in listed]


def _forwarded(
    headers: Any, *, client_ip: str, scheme: str, host: str
) -> list[tuple[bytes, bytes]]:
    """The request's headers for the backend: per-hop ones dropped, X-Forwarded-* added (the
    client's address appended to any X-Forwarded-For it sent, as proxies do)."""
    out = []
    xff = b""
    for n, v in _strip(headers):
        name = n.lower()
        if name == b"x-forwarded-for":
            xff = v if not xff else xff + b", " + v
        elif name not in (b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"):
            out.append((n, v))
    ip = client_ip.encode()
    out.append((b"x-forwarded-for", xff + b", " + ip if xff else ip))
    out.append((b"x-forwarded-proto", scheme.encode()))
    if host:
        out.append((b"x-forwarded-host", host.encode("latin-1")))
    out.append((b"x-real-ip", ip))
    return out
