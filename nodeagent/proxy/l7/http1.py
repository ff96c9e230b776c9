"""The agent's L7 path for HTTP/1.1: terminate the app's connection, route each request, send it
over pooled upstream connections, answer timeouts and failures itself.

llhttp parses both sides and heads are written with the framing rules of RFC 9112
(`nodeagent.protocol.http1_codec`, sans-io; h11 did both in pure Python before, at 3x the CPU
of the relay path per request); the request's decisions (attempts, retries, timeouts, budget)
are `nodemesh.routing.exchange.Exchange`'s; this module only moves bytes and keeps the time.
Upstream connections come from `Upstreams.connect(target)` (the agent's: made from the client
pod so they go through its mTLS tunnel) and are kept per endpoint while they stay reusable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from nodeagent.protocol import http1_codec as h1
from nodeagent.proxy.l7.deadline import Deadlines
from nodemesh.model import ServiceKey
from nodemesh.routing import exchange as ex
from nodemesh.routing.budget import Budget
from nodemesh.routing.model import Backend, HeaderModifier, RouteKey, RouteRule
from nodemesh.routing.table import RouteTable, Selected, pick_backend, rewrite_path

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
IDLE_PER_ENDPOINT = 16
HEADER_TIMEOUT = 60.0  # a client that opened a connection and sends no request head
# A request body may take BODY_TIMEOUT seconds of waiting on the client, plus one second per
# BODY_MIN_RATE bytes it sent: a body trickled a byte every few seconds (each read within the
# per-read timeout) is answered 408 instead of holding a connection and an upstream forever,
# while an upload at any sane rate is never cut. The agent's --request-body-timeout-seconds and
# --request-body-min-rate set them.
BODY_TIMEOUT = 60.0
BODY_MIN_RATE = 1024  # bytes per second
# Closing a connection whose client may still be sending (after our 400, 408, or an answer
# that came before its whole body): the kernel would answer its unread bytes with a reset,
# which can destroy the answer before the client read it. So the agent shuts down writing and
# reads and drops what still comes for up to this long and this much, then closes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection, not the request: the client's
# connection to the agent is not the agent's pooled connection to the endpoint. Forwarding a
# client's `Connection: close` made every upstream connection single-use, so a client opening a
# connection per request cost a new mTLS tunnel per request (the codec frames the message itself
# from content-length / transfer-encoding, which are kept).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})
# A Connection header naming a framing header (`Connection: content-length`) must not drop it:
# the body is passed on as it came, and without its length the upstream would read a bodiless
# request and then the body as a request of its own, one no route rule allowed (smuggling).
FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class HasKey(Protocol):
    @property
    def key(self) -> tuple[str, int]: ...


class Picker(Protocol):
    def pick(self, targets: Sequence[Any], *, now: float, exclude: Any = ()) -> Any: ...
    def opened(self, key: Any, *, now: float) -> None: ...
    def closed(self, key: Any, *, now: float) -> None: ...
    def observe(self, key: Any, rtt: float, *, now: float) -> None: ...
    def failed(self, key: Any, *, now: float) -> None: ...


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _unread(reader: asyncio.StreamReader) -> bool:
    """Bytes came on an idle connection, after a complete answer (a body sent for a HEAD or
    a 204, late): reused, they would be read as the next request's answer. (StreamReader's
    buffer has no public name; nginx closes a kept connection that gets bytes the same way.)"""
    return bool(getattr(reader, "_buffer", b""))


@dataclass
class Upstreams:
    """Where requests go: endpoints of a Service port, connections to an endpoint (pooled)."""

    targets: Callable[[ServiceKey, int], Sequence[Any]]  # ready endpoints of a Service port
    connect: Callable[[Any], Awaitable[Streams]]
    balancer: Picker
    idle: dict[tuple[str, int], list[Streams]] = field(default_factory=dict)
    opened: int = 0  # upstream connections made (reuse is requests minus this)

    async def get(self, target: Any) -> tuple[Streams, bool]:
        pool = self.idle.get(target.key)
        while pool:
            reader, writer = pool.pop()
            if not writer.is_closing() and not reader.at_eof() and not _unread(reader):
                return (reader, writer), True
            writer.close()
        self.opened += 1
        return await self.connect(target), False

    def put(self, target: Any, streams: Streams) -> None:
        pool = self.idle.setdefault(target.key, [])
        if len(pool) >= IDLE_PER_ENDPOINT:
            streams[1].close()
        else:
            pool.append(streams)

    def close(self) -> None:
        for pool in self.idle.values():
            for _, writer in pool:
                writer.close()
        self.idle.clear()


@dataclass(slots=True)  # one per request: not frozen, that costs a setattr per field
class RequestHead:
    """What the client asked, as tap and the request metrics show it."""

    method: str
    authority: str
    path: str
    started_at: float  # time.time()


@dataclass(slots=True)  # one per request: not frozen, that costs a setattr per field
class Outcome:
    """What the L7 path did with one request: the per-route and request metrics' input."""

    service: ServiceKey  # the Service the client called (the routes' parent)
    route: str  # the rule's label (Route.rule_label), "" when no route rule took it
    protocol: str  # "http1" | "http2" | "grpc"
    status: int  # the HTTP status the client got; 0 for none (reset)
    seconds: float
    retries: int = 0
    grpc_status: int | None = None
    head: RequestHead | None = None
    endpoint: Any = None  # the Target that answered (or was tried last); None: nobody was
    first_byte_s: float | None = None  # to the answer's head
    response_bytes: int = 0


Observe = Callable[[Outcome], None]


def _ignore(outcome: Outcome) -> None:
    pass


@dataclass
class RouteContext:
    """What the L7 path needs from the agent (one per agent)."""

    routes: RouteTable
    upstreams: Upstreams
    observe: Observe = _ignore
    rng: random.Random = field(default_factory=random.Random)
    budgets: dict[RouteKey, Budget] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def budget(self, selected: Selected) -> Budget:
        route = selected.route
        held = self.budgets.get(route.key)
        if held is None or held.config != route.budget:
            held = self.budgets[route.key] = Budget(route.budget)
        return held


def pick_target(
    ctx: RouteContext, backend: Backend | None, service: ServiceKey, port: int, tried: set[Any]
) -> tuple[ServiceKey, int, Any]:
    """Where a try goes: the backend's Service port (the route's own without a backend) and one
    of its ready endpoints, one this request has not tried yet if there is one (None: no ready
    endpoint at all)."""
    if backend is not None:
        service, port = backend.service, backend.port or port
    targets = ctx.upstreams.targets(service, port)
    now = ctx.clock()
    balancer = ctx.upstreams.balancer
    target = balancer.pick(targets, now=now, exclude=tried) or balancer.pick(targets, now=now)
    return service, port, target


class _Attempt:
    """One try of a request against one endpoint: its connection and parser."""

    def __init__(self, target: Any, streams: Streams, reused: bool, method: bytes) -> None:
        self.target = target
        self.reader, self.writer = streams
        self.reused = reused
        self.parser = h1.ResponseReader(method)
        self.sent = False
        self.early = False  # the answer came before the whole request went out
        self.counted = False  # the balancer counts it outstanding (opened, not yet closed)

    async def next(
        self, timeout: float | None, deadlines: Deadlines | None = None
    ) -> h1.ResponseEvent:
        """The answer's next event; raises Http1Error (the upstream closing early included).
        `timeout` bounds each read (None: a caller's timeout bounds them), on `deadlines`
        when the caller is their task."""
        parser = self.parser
        event = parser.next_event()
        while event is None:
            if timeout is None:
                data = await self.reader.read(READ_CHUNK)
            elif deadlines is not None:
                deadlines.start(timeout)
                try:
                    data = await self.reader.read(READ_CHUNK)
                except asyncio.CancelledError:
                    deadlines.check()
                    raise
                finally:
                    deadlines.stop()
            else:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_CHUNK)
            parser.feed(data)
            event = parser.next_event()
        return event

    def abort(self) -> None:
        """HTTP/1 has no way to cancel one request but closing its connection: the app sees
        its end of input (a FIN), as when a client gives up. A reset only when something is
        still queued towards the app (it is not reading: nothing would be flushed). Over a
        stream of a shared tunnel connection the close is END_STREAM (the app gets a FIN), an
        abort RST_STREAM (the app gets a reset)."""
        transport = self.writer.transport
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


async def serve(
    ctx: RouteContext,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    service: ServiceKey,
    port: int,
) -> None:
    """Serve one client connection (HTTP/1.1 keep-alive, pipelined requests answered in
    order) to `service`:`port`. A malformed request is answered 400, a body that comes too
    slowly 408, and the connection closed (lingering: `_linger_close`)."""
    deadlines = Deadlines()
    down = _Down(reader, deadlines)
    linger = False
    try:
        while True:
            try:
                request = await down.next(HEADER_TIMEOUT)
                if request is None:
                    return  # the client closed between requests
                assert isinstance(request, h1.RequestHead)
                if down.in_body and not down.parser.events and _expects_continue(request):
                    # The body is read before the request goes upstream: the 100 is ours.
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body, complete = await _read_body(down)
            except h1.Http1Error as exc:
                linger = True
                await _refuse(writer, 400, f"bad request: {exc}")
                return
            except ClientFailed as exc:
                linger = True
                await _refuse(writer, exc.status, str(exc))
                return
            keep = await _one(ctx, down, writer, request, body, complete, service, port)
            if not keep or not request.keep_alive or down.in_body:
                # Input not read yet (the rest of a body, pipelined requests) would make the
                # close a reset.
                linger = down.in_body or bool(down.parser.events) or _unread(reader)
                return
    except (h1.Http1Error, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        return
    finally:
        deadlines.close()
        if linger:
            await _linger_close(reader, writer)
        else:
            writer.close()


async def _linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close a connection whose client may still be sending, so that what we wrote last reaches
    it: a FIN after our answer, then its bytes read and dropped (LINGER_SECONDS, LINGER_BYTES)
    until it closes too. Closed with bytes unread, the kernel resets the connection, and a
    client still sending loses the answer waiting in its receive buffer (nginx's lingering_close
    and Apache's lingering close do the same)."""
    try:
        if writer.can_write_eof():
            writer.write_eof()  # sent once what is buffered went out
        dropped = 0
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                dropped += len(data)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


def _expects_continue(request: h1.RequestHead) -> bool:
    """The client waits for a 100 (Continue) before it sends the body (RFC 9110 10.1.1)."""
    return request.http11 and any(
        n.lower() == b"expect" and v.strip().lower() == b"100-continue" for n, v in request.headers
    )


class ClientFailed(Exception):
    """The client's request body could not be read whole: answered `status` by the agent."""

    status = 400


class ClientTooSlow(ClientFailed):
    """The client's request body came too slowly (BODY_TIMEOUT, BODY_MIN_RATE)."""

    status = 408


class _Down:
    """The client connection's requests, read as they are needed."""

    def __init__(self, reader: asyncio.StreamReader, deadlines: Deadlines) -> None:
        self.reader = reader
        self.deadlines = deadlines  # the connection's task's: waits for a request head
        self.parser = h1.RequestReader()
        self.in_body = False  # a request head was taken and its END not yet
        self.trailers: h1.Headers = []  # the current request's (taken with its END)
        self.waited = 0.0  # seconds spent waiting for the current request's body
        self.got = 0  # bytes read while waiting for it

    async def next(self, timeout: float) -> h1.RequestEvent | None:
        """The next event (trailers are kept in `trailers`, not returned); None: the client
        closed between requests. `timeout` bounds the whole wait, not each read: a head sent a
        byte at a time is one event (slowloris); waits within a body count towards its budget
        (BODY_TIMEOUT, BODY_MIN_RATE), whatever the read they were for."""
        parser = self.parser
        event = parser.next_event()
        if event is None:
            if self.in_body:
                return await self._body_event(timeout)
            # Only the connection's own task waits for a head (a body streamed by a task of
            # its own, _stream_rest, is read by _body_event).
            deadlines = self.deadlines
            deadlines.start(timeout)
            try:
                while event is None:
                    data = await self.reader.read(READ_CHUNK)
                    parser.feed(data)
                    event = parser.next_event()
                    if event is None and not data:
                        return None
            except asyncio.CancelledError:
                deadlines.check()
                raise
            finally:
                deadlines.stop()
        if type(event) is not bytes:
            if event is h1.END:
                self.in_body = False
            elif type(event) is h1.RequestHead:
                self.in_body = True
                self.trailers, self.waited, self.got = [], 0.0, 0
            elif type(event) is h1.Trailers:
                self.trailers = event.headers
                return await self.next(timeout)
        return event

    async def _body_event(self, timeout: float) -> h1.RequestEvent | None:
        parser = self.parser
        loop = asyncio.get_running_loop()
        budget = BODY_TIMEOUT + self.got / BODY_MIN_RATE - self.waited
        start = loop.time()
        event = None
        try:
            async with asyncio.timeout(min(timeout, budget)):
                while event is None:
                    data = await self.reader.read(READ_CHUNK)
                    self.got += len(data)
                    parser.feed(data)
                    event = parser.next_event()
                    if event is None and not data:
                        return None
        except TimeoutError:
            waited = loop.time() - start + self.waited
            raise ClientTooSlow(
                f"request body too slow: {self.got} bytes in {waited:.1f} s"
            ) from None
        finally:
            self.waited += loop.time() - start
        self.in_body = event is not h1.END
        if type(event) is h1.Trailers:
            self.trailers = event.headers
            return await self.next(timeout)
        return event


async def _refuse(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    """Answer input the parser refused (400) or a body too slow (408), then the connection
    closes (the caller's)."""
    with contextlib.suppress(ConnectionError):
        await _answer(writer, _Client(b"GET", True, False), status, reason)


async def _read_body(down: _Down) -> tuple[bytes, bool]:
    """The request body up to the retry buffer; True when that is all of it (replayable). A
    longer body is streamed to the upstream by the attempt (`_stream_rest`), never retried."""
    parts: list[bytes] = []
    size = 0
    while size <= ex.BODY_LIMIT:
        event = await down.next(HEADER_TIMEOUT)
        if type(event) is bytes:
            parts.append(event)
            size += len(event)
        elif event is h1.END:
            return b"".join(parts), True
        else:
            raise h1.Http1Error("the client closed in the middle of a request")
    return b"".join(parts), False


async def _stream_rest(down: _Down, body: h1.BodyWriter, writer: asyncio.StreamWriter) -> None:
    """The rest of a request body larger than the buffer, from the client to the upstream, and
    its end (with the client's trailers)."""
    while True:
        event = await down.next(HEADER_TIMEOUT)
        if type(event) is bytes:
            writer.write(body.data(event))
            await writer.drain()
        elif event is h1.END:
            writer.write(body.end(down.trailers))
            return
        else:
            raise h1.Http1Error("the client closed in the middle of a request")


async def _send_watching(
    down: _Down, body: h1.BodyWriter, attempt: _Attempt
) -> tuple[h1.ResponseEvent, bool]:
    """Stream the rest of a request body to the upstream while reading its answer; the answer's
    first event and whether the whole body went out. An upstream may answer before it read the
    body (413 as soon as it saw the length, 401 from an auth check) and then stop reading or
    close: that answer is the client's, not a 502, and the rest of the body is not sent."""
    sending = asyncio.ensure_future(_stream_rest(down, body, attempt.writer))
    answer = asyncio.ensure_future(attempt.next(3600))
    try:
        await asyncio.wait((sending, answer), return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            # The answer first (or as the body ended): early unless the body had all gone.
            if not sending.done() or sending.cancelled() or sending.exception() is not None:
                return answer.result(), False
            return answer.result(), True
        failure = sending.exception()
        if failure is None:
            return await answer, True
        if isinstance(failure, OSError):
            # Writing to the upstream failed: it may have answered and closed. Its answer, or
            # its close, is what the reader sees next.
            return await answer, False
        if isinstance(failure, h1.Http1Error):  # the client's body, not the upstream, failed
            raise ClientFailed(f"bad request: {failure}") from failure
        raise failure
    finally:
        for task in (sending, answer):
            if not task.done():
                task.cancel()


def _header_map(headers: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        out[key] = f"{out[key]},{v}" if key in out else v
    return out


class _HeaderMap(Mapping[str, str]):
    """A request's headers by lower-case name (repeated ones joined by commas), made only
    when a route rule looks at a header: most never do."""

    __slots__ = ("headers", "_map")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self._map: dict[str, str] | None = None

    def _made(self) -> dict[str, str]:
        if self._map is None:
            self._map = _header_map(self.headers)
        return self._map

    def __getitem__(self, key: str) -> str:
        return self._made()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._made().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._made())

    def __len__(self) -> int:
        return len(self._made())


_DROPPED = HOP_BY_HOP - FRAMING
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})  # names nothing else to drop


def hop_by_hop_dropped(
    headers: Sequence[tuple[bytes, bytes]], names: Sequence[bytes] | None = None
) -> list[tuple[bytes, bytes]]:
    """`headers` without the hop-by-hop ones, including those a Connection header names.
    `names`: the headers' names in lower case, when the caller has them."""
    if names is None:
        names = [n.lower() for n, _ in headers]
    dropped: Collection[bytes] = _DROPPED
    if b"connection" in names:
        listed = [
            value.lower()
            for (_, value), name in zip(headers, names, strict=True)
            if name == b"connection" and value.lower() not in _PLAIN_CONNECTION
        ]
        if listed:  # it names other headers (not only what nginx and most servers send)
            named = set(HOP_BY_HOP)
            for value in listed:
                named.update(v.strip() for v in value.split(b","))
            dropped = named - FRAMING
    return [h for h, name in zip(headers, names, strict=True) if name not in dropped]


def _modify(headers: list[tuple[bytes, bytes]], m: HeaderModifier) -> list[tuple[bytes, bytes]]:
    if not m:
        return headers
    drop = {n.encode() for n, _ in m.set} | {n.encode() for n in m.remove}
    kept = [(n, v) for n, v in headers if n.lower() not in drop]
    kept += [(n.encode(), v.encode()) for n, v in m.set]
    kept += [(n.encode(), v.encode()) for n, v in m.add]
    return kept


@dataclass(frozen=True, slots=True)
class _Client:
    """What answering a request needs to know of it."""

    method: bytes
    http11: bool
    keep_alive: bool


async def _answer(
    writer: asyncio.StreamWriter, client: _Client, status: int, text: str, extra=()
) -> bool:
    """Answer the client ourselves; False when its connection must close after this."""
    body = (text + "\n").encode()
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (
            b"l5d-proxy-error",
            text.encode("latin-1", "replace").replace(b"\r", b" ").replace(b"\n", b" "),
        ),
        *extra,
    ]
    head, framing, keep = h1.response_head(
        status,
        b"",
        headers,
        method=client.method,
        peer_http11=client.http11,
        keep_alive=client.keep_alive,
    )
    writer.write(head + framing.data(body) + framing.end())
    await writer.drain()
    return keep


async def _one(
    ctx: RouteContext,
    down: _Down,
    writer: asyncio.StreamWriter,
    request: h1.RequestHead,
    body: bytes,
    complete: bool,
    service: ServiceKey,
    port: int,
) -> bool:
    """One request; False when the client connection must close."""
    start = ctx.clock()
    target_bytes = request.target.decode("latin-1")
    path, _, query = target_bytes.partition("?")
    method = request.method.decode("latin-1")
    headers = request.headers
    names = [n.lower() for n, _ in headers]  # once, for every look below
    client = _Client(request.method, request.http11, request.keep_alive)
    host = headers[names.index(b"host")][1].decode("latin-1") if b"host" in names else ""
    head = RequestHead(method, host, target_bytes, time.time())
    selected = ctx.routes.select(
        service,
        port,
        method=method,
        path=path,
        headers=_HeaderMap(headers),
        query=dict(parse_qsl(query, keep_blank_values=True)) if query else {},
    )
    if selected is None:
        keep = await _answer(writer, client, 404, "no route rule matches")
        ctx.observe(Outcome(service, "", "http1", 404, ctx.clock() - start, head=head))
        return keep
    rule = selected.rule
    if request.upgrade or b"upgrade" in names:
        # Only a connection's first request is looked at before the L7 path takes it.
        await _answer(writer, client, 501, "Upgrade on a reused connection is not supported")
        ctx.observe(Outcome(service, selected.label, "http1", 501, ctx.clock() - start, head=head))
        return False
    if rule.redirect is not None:
        location = _location(rule, selected, path, query, host)
        status = rule.redirect.status_code
        keep = await _answer(writer, client, status, "redirect", [(b"location", location.encode())])
        ctx.observe(
            Outcome(service, selected.label, "http1", status, ctx.clock() - start, head=head)
        )
        return keep
    headers = _modify(hop_by_hop_dropped(headers, names), rule.request_headers)
    if rule.rewrite is not None:
        if rule.rewrite.path is not None:
            new = rewrite_path(
                path, selected.match, rule.rewrite.path.kind, rule.rewrite.path.value
            )
            target_bytes = new + ("?" + query if query else "")
        if rule.rewrite.hostname:
            headers = [(n, v) for n, v in headers if n.lower() != b"host"]
            headers.append((b"host", rule.rewrite.hostname.encode()))
    try:
        upstream_head, framing = h1.request_head(
            request.method, target_bytes.encode("latin-1"), headers, chunked=request.chunked
        )
    except h1.Http1Error as exc:  # a rewrite or a header value from the route that cannot go out
        await _answer(writer, client, 500, f"the route made an unwritable request: {exc}")
        ctx.observe(Outcome(service, selected.label, "http1", 500, ctx.clock() - start, head=head))
        return False
    x = ex.Exchange(
        rule=rule,
        backend_choice=_choices(rule, ctx.rng),
        method=method,
        body_buffered=complete,
        body_size=len(body),
        budget=ctx.budget(selected) if rule.retry is not None else None,
        now=start,
        retry_non_idempotent=selected.route.retry_non_idempotent,
    )
    shell = _Shell(ctx, x, client, writer, upstream_head, framing, body, service, port, rule)
    shell.down, shell.complete = down, complete
    status = await shell.run()
    ctx.observe(
        Outcome(
            service,
            selected.label,
            "http1",
            status,
            ctx.clock() - start,
            x.retries,
            head=head,
            endpoint=shell.target,
            first_byte_s=None if shell.head_at is None else shell.head_at - start,
            response_bytes=shell.response_bytes,
        )
    )
    return shell.client_reusable


def _choices(rule: RouteRule, rng: random.Random) -> list[Backend | None]:
    if not rule.backends:
        return [None]
    attempts = 1 + (rule.retry.attempts if rule.retry else 0)
    return [
        pick_backend(rule.backends, rng.random) for _ in range(max(attempts, ex.CONNECT_ATTEMPTS))
    ]


def _location(rule: RouteRule, selected: Selected, path: str, query: str, host: str) -> str:
    r = rule.redirect
    assert r is not None
    scheme = r.scheme or "http"
    hostname = r.hostname or host.split(":")[0]
    new_path = path
    if r.path is not None:
        new_path = rewrite_path(path, selected.match, r.path.kind, r.path.value)
    port = f":{r.port}" if r.port and r.port not in (80, 443) else ""
    return f"{scheme}://{hostname}{port}{new_path}" + (f"?{query}" if query else "")


class _Shell:
    """Carries out one Exchange's commands with real connections and timers.

    An attempt runs in the request's own task, under one timeout set to the exchange's next
    timer (on the connection's Deadlines): no task of its own, no asyncio.wait (they cost
    more than the rest of the shell's work per request). When the timer fires first, the
    attempt is interrupted where it waits (connecting, sending or reading the answer's head)
    and the exchange decides: at that time every timer of state SENDING ends the attempt
    (Cancel), so nothing is lost by not letting it run on."""

    def __init__(
        self,
        ctx: RouteContext,
        x: ex.Exchange,
        client: _Client,
        writer: asyncio.StreamWriter,
        request: bytes,
        framing: h1.BodyWriter,
        body: bytes,
        service: ServiceKey,
        port: int,
        rule: RouteRule,
    ) -> None:
        self.ctx, self.x, self.client, self.writer = ctx, x, client, writer
        self.request, self.framing, self.body = request, framing, body
        self.service, self.port, self.rule = service, port, rule
        self.attempt: _Attempt | None = None
        self.down: _Down | None = None
        self.complete = True  # the whole request body is in self.body
        self.streamed = False  # a longer body went (once) to an attempt
        self.sending: ex.Send | None = None  # the attempt to make at the next wait
        self.tried: set[tuple[str, int]] = set()
        self.status = 0
        self.client_reusable = True
        self.head: h1.ResponseHead | None = None
        self.head_at: float | None = None  # ctx.clock() when the answer's head came
        self.target: Any = None  # the endpoint tried last
        self.response_bytes = 0

    async def run(self) -> int:
        pending = self.x.begin()
        while True:
            for command in pending:
                done = await self._do(command)
                if done:
                    return self.status
            try:
                pending = await self._wait()
            except ClientFailed as exc:  # streaming its body: the upstream attempt is closed
                self._cancel()
                self.status = exc.status
                self.client_reusable = False
                client = dataclasses.replace(self.client, keep_alive=False)
                with contextlib.suppress(ConnectionError):
                    await _answer(self.writer, client, exc.status, str(exc))
                return self.status

    async def _wait(self) -> list[ex.Command]:
        at = self.x.next_timer()
        command, self.sending = self.sending, None
        if command is None:  # backing off before the next attempt
            await asyncio.sleep(0 if at is None else max(0.0, at - self.ctx.clock()))
            return self.x.handle(ex.TimerFired(self._fired(at)))
        if at is None:
            return self.x.handle(await self._send(command, bounded=False))
        assert self.down is not None
        deadlines = self.down.deadlines  # the connection's task's, which runs this
        deadlines.start(max(0.0, at - self.ctx.clock()))
        try:
            event = await self._send(command, bounded=True)
        except asyncio.CancelledError:
            try:
                deadlines.check()
            except TimeoutError:
                return self.x.handle(ex.TimerFired(self._fired(at)))
            raise
        finally:
            deadlines.stop()
        return self.x.handle(event)

    def _fired(self, at: float | None) -> float:
        """The time a timer for `at` fired: never before `at` (uvloop's timers have
        millisecond resolution and may fire a little early by this clock), so the exchange
        always acts on it."""
        now = self.ctx.clock()
        return now if at is None or now >= at else at

    async def _do(self, command: ex.Command) -> bool:
        if isinstance(command, ex.Send):
            self.sending = command
        elif isinstance(command, ex.Cancel):
            self._cancel()
        elif isinstance(command, ex.Sleep):
            pass  # the timer is the exchange's next_timer
        elif isinstance(command, ex.Answer):
            self._cancel()
            self.status = command.status
            if not await _answer(self.writer, self.client, command.status, command.reason):
                self.client_reusable = False
            return True
        elif isinstance(command, ex.Forward):
            await self._forward()
            return True
        elif isinstance(command, ex.Close):
            self._cancel()
            self.client_reusable = False
            return True
        return False

    def _cancel(self) -> None:
        self.sending = None
        if self.attempt is not None:
            self._uncount(self.attempt)
            self.attempt.abort()
            self.attempt = None

    def _uncount(self, attempt: _Attempt) -> None:
        """The attempt is over for the balancer (once, whichever way it ended)."""
        if attempt.counted:
            attempt.counted = False
            self.ctx.upstreams.balancer.closed(attempt.target.key, now=self.ctx.clock())

    async def _send(self, command: ex.Send, *, bounded: bool) -> ex.Event:
        """One attempt, until the answer's head. `bounded`: the caller's timeout covers it
        (else each read of the answer waits an hour at most)."""
        backend = command.backend
        service, port, target = pick_target(self.ctx, backend, self.service, self.port, self.tried)
        balancer = self.ctx.upstreams.balancer
        if target is None:
            return ex.UpstreamFailed(f"{service} has no ready endpoint", False, self.ctx.clock())
        self.tried.add(target.key)
        self.target = target
        try:
            streams, reused = await self.ctx.upstreams.get(target)
        except (OSError, TimeoutError) as exc:
            balancer.failed(target.key, now=self.ctx.clock())
            return ex.UpstreamFailed(f"{target.key}: {exc}", False, self.ctx.clock())
        attempt = self.attempt = _Attempt(target, streams, reused, self.client.method)
        started = self.ctx.clock()
        balancer.opened(target.key, now=started)
        attempt.counted = True
        framing, up, down = self.framing, attempt.writer, self.down
        assert down is not None
        try:
            if not self.complete:
                up.write(self.request + framing.data(self.body))
                attempt.sent = True
                self.complete = self.streamed = True  # the rest can be read once, so only here
                head, whole = await _send_watching(down, framing, attempt)
                attempt.early = not whole
            else:
                # One write: head, body, end. Not drained before the answer is read: one that
                # comes while the body is still going out (the upstream stopped reading) is
                # taken, and the connection not reused (_forward).
                up.write(self.request + framing.data(self.body) + framing.end(down.trailers))
                attempt.sent = True
                head = await attempt.next(None if bounded else 3600, down.deadlines)
            if type(head) is not h1.ResponseHead:
                raise ConnectionError("the upstream closed before answering")
        except ClientFailed:
            self._uncount(attempt)
            attempt.abort()
            self.attempt = None
            raise
        except (OSError, h1.Http1Error, asyncio.IncompleteReadError, ConnectionError) as exc:
            self._uncount(attempt)
            attempt.abort()
            self.attempt = None
            # A reused connection the server had closed meanwhile did not see the request.
            sent = self.streamed or (attempt.sent and not (reused and attempt.parser.head is None))
            return ex.UpstreamFailed(
                f"{target.key}: {str(exc) or type(exc).__name__}", sent, self.ctx.clock()
            )
        balancer.observe(target.key, self.ctx.clock() - started, now=self.ctx.clock())
        self.head, self.head_at = head, self.ctx.clock()
        return ex.HeadReceived(head.status, self.ctx.clock())

    async def _forward(self) -> None:
        attempt, head = self.attempt, self.head
        assert attempt is not None and head is not None
        self.status = head.status
        headers = _modify(hop_by_hop_dropped(head.headers), self.rule.response_headers)
        client, writer = self.client, self.writer
        if attempt.early:
            # The rest of the client's body was not read: the connection ends with this answer.
            client = dataclasses.replace(client, keep_alive=False)
        try:
            out, framing, keep = h1.response_head(
                head.status,
                head.reason,
                headers,
                method=client.method,
                peer_http11=client.http11,
                keep_alive=client.keep_alive,
            )
        except h1.Http1Error:
            # A route's header value that cannot be written: the answer cannot go out as is.
            self.x.handle(ex.UpstreamFailed("unwritable response head", True, self.ctx.clock()))
            self._cancel()
            self.client_reusable = False
            return
        if not keep:
            self.client_reusable = False
        # What is at hand goes out in one write: a head and a body that came in one read are
        # one send to the client, not two (each send costs a trip through the kernel's stack).
        out_parts = [out]
        trailers: h1.Headers = []
        queued = attempt.parser.events
        assert self.down is not None
        deadlines = self.down.deadlines
        try:
            while True:
                if not queued:
                    writer.write(b"".join(out_parts))
                    out_parts.clear()
                    await writer.drain()
                at = self.x.next_timer()
                if at is not None and at - self.ctx.clock() > 3600.0:
                    at = None  # the hour's guard comes first: not the exchange's timer
                timeout = 3600.0 if at is None else max(0.0, at - self.ctx.clock())
                try:
                    event = await attempt.next(timeout, deadlines)
                except TimeoutError:
                    self.x.handle(ex.TimerFired(self._fired(at)))
                    self._cancel()
                    self.client_reusable = False
                    return
                if type(event) is bytes:
                    self.response_bytes += len(event)
                    out_parts.append(framing.data(event))
                elif event is h1.END:
                    out_parts.append(framing.end(trailers))
                    writer.write(b"".join(out_parts))
                    await writer.drain()
                    self.x.handle(ex.ResponseEnded(self.ctx.clock()))
                    break
                elif type(event) is h1.Trailers:
                    trailers = event.headers
                else:
                    raise ConnectionError("the upstream ended the response early")
        except (OSError, h1.Http1Error, asyncio.IncompleteReadError, ConnectionError) as exc:
            if out_parts:  # the head (and body) before the failure, as the client would have had
                writer.write(b"".join(out_parts))
            self.x.handle(ex.UpstreamFailed(str(exc), True, self.ctx.clock()))
            self._cancel()
            self.client_reusable = False
            return
        finally:
            self._uncount(attempt)
        # Reused only when the whole request went out before the answer (else the upstream
        # may read the rest of it, or whatever comes next, as the next request).
        if (
            attempt.parser.reusable
            and not attempt.early
            and not attempt.writer.transport.get_write_buffer_size()
        ):
            self.ctx.upstreams.put(attempt.target, (attempt.reader, attempt.writer))
        else:
            attempt.abort()
        self.attempt = None
