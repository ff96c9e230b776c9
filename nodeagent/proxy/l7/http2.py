"""The agent's L7 path for HTTP/2 and gRPC: each request stream of the app's connection becomes
a stream on a pooled upstream connection to an endpoint chosen for that request.

Library: `h2` (python-hyper), sans-io, the same family as the `hpack` the observer already uses;
headers are decoded and re-encoded (HPACK) because the two connections have their own tables.
Request bodies are piped as they arrive (streaming and bidirectional gRPC work) and kept up to
`exchange.BODY_LIMIT` so a request that ended within it can be retried; the decisions are
`nodemesh.routing.exchange.Exchange`'s, as for HTTP/1. A gRPC request that times out or cannot be
sent is answered with a trailers-only gRPC status (DEADLINE_EXCEEDED, UNAVAILABLE ...), and its
upstream stream is reset (RST_STREAM CANCEL), which the app sees as the call cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from nodeagent.proxy.l7.http1 import (
    Outcome,
    RequestHead,
    RouteContext,
    Streams,
    _choices,
    pick_target,
)
from nodemesh.model import ServiceKey
from nodemesh.routing import exchange as ex
from nodemesh.routing.model import HeaderModifier, RouteRule
from nodemesh.routing.table import Selected, rewrite_path

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
# How many times one request may be sent again on a fresh connection because the server retired
# the last one (GOAWAY) before it saw the stream: many streams in flight on a server that serves
# few per connection (nginx's keepalive_requests) can meet several GOAWAYs in a row.
GOAWAY_RESENDS = 10
GRPC_STATUS = {504: 4, 502: 14, 503: 14, 404: 12, 500: 13}  # DEADLINE_EXCEEDED, UNAVAILABLE ...
Headers = list[tuple[bytes, bytes]]
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
# Flow control is the backpressure: data is acknowledged (WINDOW_UPDATE) only once it has been
# passed on, so a peer that does not read stops the other side within a stream window, and the
# agent holds at most that much per stream (it acknowledged everything at once before: a client
# not reading a 64 MiB answer left all 64 MiB in the agent). The connection windows are large so
# that one stalled stream does not stop the others sharing its connection.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
# A request body past the retry buffer is dropped once sent, but only once the server has shown
# it took the stream (a WINDOW_UPDATE for it): a stream the server refuses with its GOAWAY never
# reached the app and goes again on another connection, body and all. Until then the server's
# initial window bounds what was sent; this bounds what is kept even if that window is huge.
KEEP_UNCONFIRMED = 1024 * 1024


class _Side:
    """One h2 connection over asyncio streams: writes flushed at once, sends wait for window."""

    def __init__(self, conn: h2.connection.H2Connection, streams: Streams) -> None:
        self.conn = conn
        self.reader, self.writer = streams
        self.window = asyncio.Event()
        self.closed = False

    def open_windows(self) -> None:
        """After initiate_connection: our stream and connection windows (see STREAM_WINDOW)."""
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
        grow = CONNECTION_WINDOW - self.conn.inbound_flow_control_window
        if grow > 0:
            self.conn.increment_flow_control_window(grow)

    def ack(self, size: int, sid: int) -> None:
        """`size` flow-controlled bytes of stream `sid` were passed on: let the peer send more."""
        if size and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.conn.acknowledge_received_data(size, sid)
                self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def send_data(self, sid: int, data: bytes, *, end: bool = False) -> None:
        view = memoryview(data)
        while view:
            size = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if size <= 0:
                self.window.clear()
                await self.window.wait()
                if self.closed:
                    raise ConnectionError("connection closed")
                continue
            self.conn.send_data(sid, bytes(view[:size]))
            view = view[size:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()
        await self.writer.drain()

    def reset(self, sid: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.conn.reset_stream(sid, code)
            self.flush()


class _ClientConnection(h2.connection.H2Connection):
    """h2's connection, except that a GOAWAY does not end it at once.

    h2 closes its state machine on GOAWAY, after which every frame raises ProtocolError; but the
    server still answers the streams up to the GOAWAY's last stream id (RFC 9113 6.8), which
    is how nginx retires a connection after `keepalive_requests` (1000 by default). Here the
    GOAWAY only becomes a ConnectionTerminated event: the pool stops opening streams on the
    connection, the streams the server will not serve are failed as refused (safe to send
    again), and the others complete.
    """

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


@dataclass(frozen=True)
class _Refused:
    """A stream the server will not serve (past a GOAWAY's last stream id)."""

    stream_id: int


class _Upstream(_Side):
    """A pooled client connection to one endpoint; a reader task routes events by stream."""

    def __init__(self, target: Any, streams: Streams) -> None:
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        super().__init__(_ClientConnection(cfg), streams)
        self.target = target
        self.queues: dict[int, asyncio.Queue[Any]] = {}
        self.confirmed: set[int] = set()  # streams the server sent a WINDOW_UPDATE for
        # The server sent GOAWAY: no new streams here; closed once the last one is done.
        self.going_away = False
        self.conn.initiate_connection()
        self.open_windows()
        self.flush()
        self.task = asyncio.ensure_future(self._read())

    @property
    def usable(self) -> bool:
        return not self.closed and not self.going_away

    @property
    def capacity(self) -> int:
        limit = self.conn.remote_settings.max_concurrent_streams or 100
        return min(limit, 1000) - len(self.queues)

    def open(self, headers: Headers, *, end: bool) -> tuple[int, asyncio.Queue[Any]]:
        if not self.usable:
            raise h2.exceptions.ProtocolError("the upstream connection is going away")
        sid = self.conn.get_next_available_stream_id()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.queues[sid] = queue
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()
        return sid, queue

    def done(self, sid: int) -> None:
        queue = self.queues.pop(sid, None)
        self.confirmed.discard(sid)
        while queue is not None and not queue.empty():
            left = queue.get_nowait()  # never passed on: give the connection window back
            if isinstance(left, h2.events.DataReceived):
                self.ack(left.flow_controlled_length, sid)
        if self.going_away and not self.queues:
            self.writer.close()  # the server's last answer is in: nothing more will come

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._dispatch(event)
                self.flush()
        except (OSError, h2.exceptions.ProtocolError) as exc:
            log.debug("h2 upstream %s: %s", self.target.key, exc)
        finally:
            self.closed = True
            self.window.set()
            for queue in self.queues.values():
                queue.put_nowait(ConnectionError("upstream connection closed"))
            self.writer.close()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            if isinstance(event, h2.events.WindowUpdated) and event.stream_id in self.queues:
                self.confirmed.add(event.stream_id)
            self.window.set()
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            # Streams past the last id never reached the server's app: another connection may
            # carry them (sent=False for the Exchange). The others are still being answered.
            last = event.last_stream_id if event.last_stream_id is not None else 2**31
            for stream_id, waiting in self.queues.items():
                if stream_id > last:
                    waiting.put_nowait(_Refused(stream_id))
            if not self.queues:
                self.writer.close()
            return
        sid = getattr(event, "stream_id", None)
        queue = self.queues.get(sid) if sid else None
        if queue is not None:
            queue.put_nowait(event)  # a DataReceived is acknowledged once the client took it
        elif isinstance(event, h2.events.DataReceived):
            self.ack(event.flow_controlled_length, event.stream_id)


@dataclass
class H2Pool:
    """Upstream HTTP/2 connections per endpoint; a new one only when the others are full."""

    conns: dict[tuple[str, int], list[_Upstream]] = field(default_factory=dict)
    opened: int = 0
    # One connection attempt per endpoint at a time: requests arriving meanwhile share it.
    connecting: dict[tuple[str, int], asyncio.Lock] = field(default_factory=dict)
    # How to reach an endpoint; None: the context's (ctx.upstreams.connect).
    connect: Callable[[Any], Awaitable[Streams]] | None = None

    async def get(self, ctx: RouteContext, target: Any) -> _Upstream:
        lock = self.connecting.setdefault(target.key, asyncio.Lock())
        async with lock:
            # Connections going away stay listed (close() must reach them) but take no streams.
            held = [c for c in self.conns.get(target.key, []) if not c.closed]
            self.conns[target.key] = held
            for c in held:
                if c.usable and c.capacity > 0:
                    return c
            streams = await (self.connect or ctx.upstreams.connect)(target)
            self.opened += 1
            conn = _Upstream(target, streams)
            held.append(conn)
            return conn

    def close(self) -> None:
        for held in self.conns.values():
            for c in held:
                c.task.cancel()
                c.writer.close()
        self.conns.clear()


@dataclass
class _Request:
    sid: int
    headers: Headers
    chunks: list[bytes] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # each chunk's flow-controlled length
    acked: int = 0  # chunks acknowledged to the client (sent upstream)
    size: int = 0
    ended: bool = False
    freed: bool = False  # body bytes were dropped after sending (past the retry buffer)
    kept: int = 0  # chunks before this one were dropped (freed)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


async def serve(
    ctx: RouteContext,
    pool: H2Pool,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    service: ServiceKey,
    port: int,
) -> None:
    """Serve one client HTTP/2 connection (prior knowledge: gRPC and h2c) to `service`:`port`."""
    cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
    down = _Side(h2.connection.H2Connection(cfg), (reader, writer))
    down.conn.initiate_connection()
    down.open_windows()
    down.flush()
    requests: dict[int, _Request] = {}
    try:
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                break
            for event in down.conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    req = requests[event.stream_id] = _Request(event.stream_id, list(event.headers))
                    if event.stream_ended is not None:
                        req.ended = True
                    req.task = asyncio.ensure_future(
                        _stream(ctx, pool, down, req, requests, service, port)
                    )
                elif isinstance(event, h2.events.DataReceived):
                    got = requests.get(event.stream_id)
                    if got is not None:  # acknowledged once sent upstream (_Shell._pump)
                        got.chunks.append(event.data)
                        got.sizes.append(event.flow_controlled_length)
                        got.size += len(event.data)
                        got.changed.set()
                    else:
                        down.ack(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    got = requests.get(event.stream_id)
                    if got is not None:
                        got.ended = True
                        got.changed.set()
                elif isinstance(event, h2.events.StreamReset):
                    got = requests.pop(event.stream_id, None)
                    if got is not None and got.task is not None:
                        got.task.cancel()
                elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                    down.window.set()
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            down.flush()
    except (OSError, h2.exceptions.ProtocolError) as exc:
        log.debug("h2 downstream: %s", exc)
    finally:
        down.closed = True
        down.window.set()
        for req in requests.values():
            if req.task is not None:
                req.task.cancel()
        writer.close()


def _pseudo(headers: Headers) -> dict[bytes, bytes]:
    return {n: v for n, v in headers if n.startswith(b":")}


def _modify(headers: Headers, m: HeaderModifier) -> Headers:
    if not m:
        return headers
    drop = {n.encode() for n, _ in m.set} | {n.encode() for n in m.remove}
    kept = [(n, v) for n, v in headers if n.startswith(b":") or n.lower() not in drop]
    kept += [(n.encode(), v.encode()) for n, v in m.set]
    kept += [(n.encode(), v.encode()) for n, v in m.add]
    return kept


async def _stream(
    ctx: RouteContext,
    pool: H2Pool,
    down: _Side,
    req: _Request,
    requests: dict[int, _Request],
    service: ServiceKey,
    port: int,
) -> None:
    start = ctx.clock()
    pseudo = _pseudo(req.headers)
    method = pseudo.get(b":method", b"GET").decode("latin-1")
    target = pseudo.get(b":path", b"/").decode("latin-1")
    path, _, query = target.partition("?")
    plain = {n.decode("latin-1"): v.decode("latin-1") for n, v in req.headers}
    grpc = plain.get("content-type", "").startswith("application/grpc")
    authority = pseudo.get(b":authority", b"").decode("latin-1")
    head = RequestHead(method, authority, target, time.time())
    selected: Selected | None = None
    rule: RouteRule | None = None
    if ctx.routes.routed(service, port):
        selected = ctx.routes.select(
            service,
            port,
            method=method,
            path=path,
            headers=plain,
            query=dict(parse_qsl(query, keep_blank_values=True)),
        )
        if selected is None:
            _answer(down, req.sid, 404, "no route rule matches", grpc=grpc)
            ctx.observe(
                Outcome(
                    service,
                    "",
                    "grpc" if grpc else "http2",
                    404,
                    ctx.clock() - start,
                    grpc_status=GRPC_STATUS[404] if grpc else None,
                    head=head,
                )
            )
            requests.pop(req.sid, None)
            return
        rule = selected.rule
    headers = [(n, v) for n, v in req.headers if n.lower() not in _HOP]
    if rule is not None:
        headers = _modify(headers, rule.request_headers)
        if rule.rewrite is not None and rule.rewrite.path is not None and selected is not None:
            new = rewrite_path(
                path, selected.match, rule.rewrite.path.kind, rule.rewrite.path.value
            )
            headers = [
                (n, (new + ("?" + query if query else "")).encode()) if n == b":path" else (n, v)
                for n, v in headers
            ]
    x = ex.Exchange(
        rule=rule,
        backend_choice=_choices(rule, ctx.rng) if rule is not None else [None],
        method=method,
        body_buffered=True,
        body_size=0,
        budget=ctx.budget(selected) if selected is not None and rule and rule.retry else None,
        now=start,
        retry_non_idempotent=True
        if grpc
        else bool(selected and selected.route.retry_non_idempotent),
        grpc=grpc,
    )
    shell = _Shell(ctx, pool, down, req, x, headers, service, port, rule, grpc)
    try:
        status = await shell.run()
    except Exception:
        # A bug on one stream must fail that request, never leave the client waiting for it.
        log.exception("L7 HTTP/2 stream %d to %s failed", req.sid, service)
        down.reset(req.sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        status = 502
    finally:
        shell.cancel()
        requests.pop(req.sid, None)
        # Body the upstream never got (answered early, reset): give the client its window back.
        down.ack(sum(req.sizes[req.acked :]), req.sid)
        req.acked = len(req.sizes)
    ctx.observe(
        Outcome(
            service,
            selected.label if selected else "",
            "grpc" if grpc else "http2",
            status,
            ctx.clock() - start,
            x.retries,
            shell.grpc_status if grpc else None,
            head=head,
            endpoint=shell.last_target,
            first_byte_s=None if shell.head_at is None else shell.head_at - start,
            response_bytes=shell.response_bytes,
        )
    )


def _grpc_status(headers: Any) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


def _answer(down: _Side, sid: int, status: int, reason: str, *, grpc: bool) -> None:
    with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
        if grpc:
            down.conn.send_headers(
                sid,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", str(GRPC_STATUS.get(status, 2)).encode()),
                    (b"grpc-message", reason.encode()),
                ],
                end_stream=True,
            )
        else:
            body = (reason + "\n").encode()
            down.conn.send_headers(
                sid,
                [(b":status", str(status).encode()), (b"content-length", str(len(body)).encode())],
            )
            down.conn.send_data(sid, body, end_stream=True)
        down.flush()


class _Shell:
    def __init__(
        self,
        ctx: RouteContext,
        pool: H2Pool,
        down: _Side,
        req: _Request,
        x: ex.Exchange,
        headers: Headers,
        service: ServiceKey,
        port: int,
        rule: RouteRule | None,
        grpc: bool,
    ) -> None:
        self.ctx, self.pool, self.down, self.req, self.x = ctx, pool, down, req, x
        self.headers, self.service, self.port, self.rule, self.grpc = (
            headers,
            service,
            port,
            rule,
            grpc,
        )
        self.task: asyncio.Task[ex.Event] | None = None
        self.pump: asyncio.Task[None] | None = None
        self.up: _Upstream | None = None
        self.up_sid = 0
        self.queue: asyncio.Queue[Any] | None = None
        self.head: Any = None
        self.tried: set[tuple[str, int]] = set()
        self.status = 0
        self.grpc_status: int | None = None  # from the answer's trailers (gRPC)
        self.target: Any = None
        self.last_target: Any = None  # the endpoint tried last (kept after release)
        self.head_at: float | None = None
        self.response_bytes = 0

    def _replayable(self) -> None:
        self.x.replayable = self.req.ended and self.req.size <= ex.BODY_LIMIT

    async def run(self) -> int:
        pending = self.x.begin()
        while True:
            for command in pending:
                if await self._do(command):
                    return self.status
            at = self.x.next_timer()
            timeout = None if at is None else max(0.0, at - self.ctx.clock())
            if self.task is None:
                await asyncio.sleep(timeout or 0)
                pending = self.x.handle(ex.TimerFired(self.ctx.clock()))
                continue
            task = self.task
            done, _ = await asyncio.wait({task}, timeout=timeout)
            self._replayable()
            if not done:
                pending = self.x.handle(ex.TimerFired(self.ctx.clock()))
            else:
                self.task = None
                pending = self.x.handle(task.result())

    async def _do(self, command: ex.Command) -> bool:
        if isinstance(command, ex.Send):
            self.task = asyncio.ensure_future(self._send(command))
        elif isinstance(command, ex.Cancel):
            self.cancel()
        elif isinstance(command, ex.Answer):
            self.cancel()
            self.status = command.status
            if self.grpc:
                self.grpc_status = GRPC_STATUS.get(command.status, 2)
            _answer(self.down, self.req.sid, command.status, command.reason, grpc=self.grpc)
            return True
        elif isinstance(command, ex.Forward):
            await self._forward()
            return True
        elif isinstance(command, ex.Close):
            self.cancel()
            self.down.reset(self.req.sid)
            return True
        return False

    def cancel(self) -> None:
        """Stop the attempt in flight: its send task, body pump and upstream stream."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._release()

    def _release(self) -> None:
        """Let go of the upstream stream (reset) and its body pump, but not the send task,
        which calls this on a failed attempt: cancelling itself there cleared `self.task` under
        `run`, whose stream then died of an AttributeError with the client's stream unanswered
        (h2load hung on any upstream GOAWAY or reset)."""
        if self.pump is not None:
            self.pump.cancel()
            self.pump = None
        if self.up is not None:
            self.up.reset(self.up_sid)  # RST_STREAM CANCEL: the app sees the call cancelled
            self.up.done(self.up_sid)
            if self.target is not None:
                self.ctx.upstreams.balancer.closed(self.target.key, now=self.ctx.clock())
                self.target = None
            self.up = None

    async def _send(self, command: ex.Send) -> ex.Event:
        backend = command.backend
        service, port, target = pick_target(self.ctx, backend, self.service, self.port, self.tried)
        balancer = self.ctx.upstreams.balancer
        if target is None:
            return ex.UpstreamFailed(f"{service} has no ready endpoint", False, self.ctx.clock())
        self.tried.add(target.key)
        self.last_target = target
        headers = [(n, v) for n, v in self.headers]
        if backend is not None:
            headers = [
                (n, f"{service.name}.{service.namespace}:{port}".encode())
                if n == b":authority"
                else (n, v)
                for n, v in headers
            ]
        end = self.req.ended and not self.req.chunks
        for left in range(GOAWAY_RESENDS, -1, -1):
            opened = self.pool.opened
            try:
                up = await self.pool.get(self.ctx, target)
            except (OSError, TimeoutError) as exc:
                balancer.failed(target.key, now=self.ctx.clock())
                return ex.UpstreamFailed(f"{target.key}: {exc}", False, self.ctx.clock())
            fresh = self.pool.opened != opened
            started = self.ctx.clock()
            try:
                sid, queue = up.open(headers, end=end)
            except h2.exceptions.ProtocolError as exc:
                if not up.usable and left:
                    continue  # it went away while we waited for it: take another
                return ex.UpstreamFailed(str(exc), False, self.ctx.clock())
            balancer.opened(target.key, now=started)
            self.target = target
            self.up, self.up_sid, self.queue = up, sid, queue
            if not end:
                self.pump = asyncio.ensure_future(self._pump(up, sid))
            event = await queue.get()
            while isinstance(event, h2.events.InformationalResponseReceived):
                event = await queue.get()
            if isinstance(event, h2.events.ResponseReceived):
                if not fresh:  # a new connection's first answer waited for its set-up too
                    balancer.observe(target.key, self.ctx.clock() - started, now=self.ctx.clock())
                self.head, self.head_at = event, self.ctx.clock()
                status = int(_pseudo(list(event.headers)).get(b":status", b"502"))
                grpc_status = None
                if self.grpc and event.stream_ended is not None:  # trailers-only: a call's end
                    grpc_status = _grpc_status(event.headers)
                return ex.HeadReceived(status, self.ctx.clock(), grpc_status)
            self._release()
            if isinstance(event, _Refused) and not self.req.freed and left:
                # The server retired the connection (GOAWAY) before it saw this stream: the
                # request never left, so it goes on a fresh connection to the same endpoint
                # without costing an attempt, as HTTP/2 clients do (Go's net/http2).
                continue
            if isinstance(event, _Refused) or (
                isinstance(event, h2.events.StreamReset)
                and event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
            ):
                # Refused before the app saw it: a redial is safe unless body bytes are gone.
                return ex.UpstreamFailed("stream refused", self.req.freed, self.ctx.clock())
            return ex.UpstreamFailed(f"{target.key}: {event}", True, self.ctx.clock())
        raise AssertionError("unreachable: the last pass returns")

    async def _pump(self, up: _Upstream, sid: int) -> None:
        """The request body to the upstream stream, from its first byte, as it arrives."""
        sent = 0
        try:
            while True:
                while sent < len(self.req.chunks):
                    await up.send_data(sid, self.req.chunks[sent])
                    if sent >= self.req.acked:  # a retry sends it again: acknowledged once
                        self.down.ack(self.req.sizes[sent], self.req.sid)
                        self.req.acked = sent + 1
                    sent += 1
                    req = self.req
                    if req.size > ex.BODY_LIMIT and (
                        sid in up.confirmed or sum(req.sizes[req.kept : sent]) > KEEP_UNCONFIRMED
                    ):
                        # Past the retry buffer nothing will be re-sent: keep no copy.
                        for i in range(req.kept, sent):
                            req.chunks[i] = b""
                        req.kept = sent
                        req.freed = True
                if self.req.ended:
                    up.conn.end_stream(sid)
                    up.flush()
                    return
                self.req.changed.clear()
                await self.req.changed.wait()
        except (h2.exceptions.ProtocolError, ConnectionError, KeyError):
            return

    def _note_grpc_status(self, headers: Any) -> None:
        found = _grpc_status(headers)
        if found is not None:
            self.grpc_status = found

    async def _forward(self) -> None:
        assert self.head is not None and self.queue is not None
        head_headers = [(n, v) for n, v in self.head.headers if n.lower() not in _HOP]
        if self.rule is not None:
            head_headers = _modify(head_headers, self.rule.response_headers)
        self.status = int(_pseudo(head_headers).get(b":status", b"200"))
        self._note_grpc_status(head_headers)
        ended = self.head.stream_ended is not None
        sid = self.req.sid
        try:
            self.down.conn.send_headers(sid, head_headers, end_stream=ended)
            self.down.flush()
            while not ended:
                at = self.x.next_timer()
                timeout = None if at is None else max(0.0, at - self.ctx.clock())
                try:
                    event = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    self.x.handle(ex.TimerFired(self.ctx.clock()))
                    self.cancel()
                    self.down.reset(sid)
                    return
                if isinstance(event, h2.events.DataReceived):
                    self.response_bytes += len(event.data)
                    await self.down.send_data(sid, event.data, end=event.stream_ended is not None)
                    ended = event.stream_ended is not None
                    if self.up is not None:  # the client took it: the server may send more
                        self.up.ack(event.flow_controlled_length, self.up_sid)
                elif isinstance(event, h2.events.TrailersReceived):
                    self._note_grpc_status(event.headers)
                    self.down.conn.send_headers(sid, list(event.headers), end_stream=True)
                    self.down.flush()
                    ended = True
                elif isinstance(event, h2.events.StreamEnded):
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        self.down.conn.end_stream(sid)
                        self.down.flush()
                    ended = True
                else:
                    raise ConnectionError(f"upstream stream ended: {event}")
            self.x.handle(ex.ResponseEnded(self.ctx.clock()))
        except (ConnectionError, h2.exceptions.ProtocolError, KeyError) as exc:
            self.x.handle(ex.UpstreamFailed(str(exc), True, self.ctx.clock()))
            self.down.reset(sid)
        finally:
            if self.up is not None:
                self.up.done(self.up_sid)
                self.up = None
            if self.target is not None:
                self.ctx.upstreams.balancer.closed(self.target.key, now=self.ctx.clock())
                self.target = None
            if self.pump is not None and self.pump.done():
                self.pump = None
