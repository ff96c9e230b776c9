"""Watching a relayed connection: protocol detection, HTTP/1 and HTTP/2 observers, events out.

A `ConnectionTap` is attached to a relay and sees every chunk before it is forwarded; it never
holds or changes bytes, so detection costs no latency: a server's banner passes at once (and
settles the connection as server-first), an HTTP request line settles it as HTTP on the first
chunk, and a silent client is counted open when the detection timer fires but stays undecided
until either side speaks (a silent client says nothing about the server). Observer errors
only switch the tap to opaque; the relay carries on. Clocks: monotonic for latencies,
wall-clock for the `at`/`started_at` stamps the events carry.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass
from typing import Any, cast

from nodeagent.observe.events import (
    ObservationSink,
    Peer,
    RequestObserved,
    RequestStarted,
    TcpClosed,
    TcpOpened,
)
from nodeagent.observe.metrics import (
    CONNECTION_PROTOCOLS,
    SERVER_FIRST,
    SERVER_FIRST_REMEMBERED,
)
from nodeagent.protocol import detect
from nodeagent.protocol import http1_events as h1
from nodeagent.protocol import http2_events as h2
from nodeagent.protocol.classify import outcome_label
from nodeagent.protocol.errors import ProtocolError
from nodeagent.protocol.http1 import Http1Observer
from nodeagent.protocol.http2 import Http2Observer

log = logging.getLogger(__name__)

DETECT_TIMEOUT = 0.3

_TCP_PROTOCOL = {
    detect.Protocol.HTTP1: "http1",
    detect.Protocol.HTTP2: "http2",
    detect.Protocol.TLS: "tls",
    detect.Protocol.OPAQUE: "tcp",
}

# Process-wide ids, so that events from all of a node's pods can be joined.
_request_ids = itertools.count(1)

_protocol_counters: dict[tuple[str, str, str], Any] = {}


def _count_protocol(direction: str, protocol: str, cause: str) -> None:
    key = (direction, protocol, cause)
    child = _protocol_counters.get(key)
    if child is None:
        child = _protocol_counters[key] = CONNECTION_PROTOCOLS.labels(*key)
    child.inc()


# call_later(delay, fn) -> something with cancel(); the event loop's, or a test's.
Scheduler = Callable[[float, Callable[[], None]], Any]


@dataclass(slots=True)
class _Request:
    req_id: int
    protocol: str
    method: str
    authority: str
    path: str
    started: float
    started_at: float
    tapped: bool
    first_byte: float | None = None
    status: int | None = None
    request_bytes: int = 0
    # Observe once: the id of the same request reported as the destination's inbound one
    # (0: not reported for it), and whether a tap wanted that one.
    peer_req_id: int = 0
    peer_tapped: bool = False


class ConnectionTap:
    def __init__(
        self,
        *,
        sink: ObservationSink,
        conn_id: int,
        direction: str,
        src: Peer,
        dst: Peer,
        tls: bool,
        dst_key: tuple[str, int],
        src_port: int = 0,
        dst_port: int = 0,
        opaque_ports: Container[int] = frozenset(),
        skip_detection: bool = False,
        memory: detect.ServerFirstMemory | None = None,
        call_later: Scheduler | None = None,
        detect_timeout: float = DETECT_TIMEOUT,
        on_first_byte: Callable[[float], None] | None = None,
        parse: bool = True,
        for_peer: Peer | None = None,
    ) -> None:
        """`parse=False`: detect the protocol (for the connection's metrics) but parse no
        request; the source agent reports them for us (observe once). `for_peer`: we are that
        source: every request observed is also reported as `for_peer`'s inbound one (`for_peer`
        names the destination pod as its own agent does: no Service)."""
        self.sink = sink
        self.conn_id = conn_id
        self.direction = direction
        self.src = src
        self.dst = dst
        self.tls = tls
        self.dst_key = dst_key
        # Per connection, unlike the interned peers: only tap events carry them.
        self.src_port = src_port
        self.dst_port = dst_port
        self.opaque_ports = opaque_ports
        self.memory = memory
        self.on_first_byte = on_first_byte
        self.opened = time.monotonic()
        self.opened_at = time.time()
        self.protocol: detect.Protocol | None = None
        self.reason = ""
        self.sni: str | None = None
        self.read_bytes = 0
        self.write_bytes = 0
        self.prefix = bytearray()
        self.server_prefix = bytearray()  # an HTTP/2 server's SETTINGS, sent before the client
        self.observer: Http1Observer | Http2Observer | None = None
        self.requests: dict[int, _Request] = {}
        self._timer: Any = None
        self._announced = False
        self.parse = parse
        self.for_peer = for_peer
        if skip_detection:
            self._settle(
                detect.Decision(
                    detect.Protocol.OPAQUE, False, "decided by the source", cause="source"
                )
            )
            return
        self._settle_if(self._decide(b""))
        if self.protocol is None and call_later is not None:
            self._timer = call_later(detect_timeout, self._timed_out)

    # --- detection --------------------------------------------------------------------------

    def _decide(
        self,
        data: bytes,
        *,
        timed_out: bool = False,
        server_spoke_first: bool = False,
        server_bytes: bytes = b"",
    ) -> detect.Decision:
        ip, port = self.dst_key
        return detect.decide(
            data,
            dst_ip=ip,
            dst_port=port,
            # decide() only asks `port in ...`, which a PortSet answers without listing ports.
            pod_opaque_ports=cast(Collection[int], self.opaque_ports),
            server_first=self.memory,
            now=time.monotonic(),
            timed_out=timed_out,
            server_spoke_first=server_spoke_first,
            server_bytes=server_bytes,
        )

    def _settle_if(self, decision: detect.Decision) -> None:
        if not decision.need_more and decision.protocol is not None:
            self._settle(decision)

    def _settle(self, decision: detect.Decision) -> None:
        assert decision.protocol is not None
        self.protocol = decision.protocol
        self.reason = decision.reason
        self.sni = decision.sni
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if decision.remember_server_first and self.memory is not None:
            ip, port = self.dst_key
            if self.memory.remember(ip, port, now=time.monotonic()):
                SERVER_FIRST_REMEMBERED.inc()
                SERVER_FIRST.memory = self.memory  # the agent's one memory (listeners.py)
                log.info(
                    "%s:%d spoke first: its connections are relayed opaque, without request "
                    "metrics, for %.0f s",
                    ip,
                    port,
                    self.memory.ttl,
                )
        _count_protocol(self.direction, _TCP_PROTOCOL[decision.protocol], decision.cause)
        prefix, self.prefix = bytes(self.prefix), bytearray()
        self._announce(_TCP_PROTOCOL[decision.protocol])
        if not self.parse:
            return
        if decision.protocol is detect.Protocol.HTTP1:
            self.observer = Http1Observer()
        elif decision.protocol is detect.Protocol.HTTP2:
            self.observer = Http2Observer()
        if self.observer is not None and prefix:
            self._feed(self.observer.feed_client, prefix)
        server_prefix, self.server_prefix = bytes(self.server_prefix), bytearray()
        if isinstance(self.observer, Http2Observer) and server_prefix:
            self._feed(self.observer.feed_server, server_prefix)

    def _announce(self, protocol: str) -> None:
        """Report the connection open, once: when decided, or when the detection timer fires
        on a connection nobody has spoken on yet (it is open, whatever it turns out to be)."""
        if self._announced:
            return
        self._announced = True
        self.sink.tcp_opened(
            TcpOpened(
                self.conn_id,
                self.direction,
                self.src,
                self.dst,
                protocol,
                self.tls,
                self.opened_at,
            )
        )

    def _timed_out(self) -> None:
        self._timer = None
        if self.protocol is None:
            decision = self._decide(bytes(self.prefix), timed_out=True)
            if decision.protocol is None:
                self._announce("tcp")
            else:
                self._settle(decision)

    # --- bytes from the relay ---------------------------------------------------------------

    def client(self, data: bytes) -> None:
        self.read_bytes += len(data)
        if self.observer is not None:
            self._feed(self.observer.feed_client, data)
        elif self.protocol is None:
            self.prefix += data
            self._settle_if(self._decide(bytes(self.prefix)))

    def server(self, data: bytes) -> None:
        self.write_bytes += len(data)
        if self.protocol is None and not self.prefix:
            held = self.server_prefix + data
            if len(held) <= MAX_SERVER_PREFIX and _h2_settings_first(held):
                # HTTP/2 servers (gRPC's among them) send SETTINGS without waiting for the
                # client's preface: that is not a server-speaks-first protocol. Keep the bytes
                # for the observer and let the client's first bytes decide.
                self.server_prefix = held
                return
        if self.protocol is None:
            if self.prefix:
                # The server answered an undecided prefix: whatever this is, it is not HTTP.
                self._settle(self._decide(bytes(self.prefix), timed_out=True))
            else:
                self._settle(
                    self._decide(b"", server_spoke_first=True, server_bytes=bytes(data[:16]))
                )
        if self.observer is not None:
            self._feed(self.observer.feed_server, data)

    def closed(self, error: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.protocol is None:
            self._settle(
                detect.Decision(
                    detect.Protocol.OPAQUE, False, "closed before detection", cause="closed"
                )
            )
        if self.observer is not None:
            self._events(self.observer.close())
            self._drop_observer()
        self.sink.tcp_closed(
            TcpClosed(
                self.conn_id,
                self.direction,
                self.src,
                self.dst,
                _TCP_PROTOCOL[self.protocol] if self.protocol else "tcp",
                self.tls,
                self.read_bytes,
                self.write_bytes,
                time.monotonic() - self.opened,
                error,
            )
        )

    def _drop_observer(self) -> None:
        if self.observer is not None:
            self.observer.release()
            self.observer = None

    def _feed(self, feed: Callable[[bytes], list[Any]], data: bytes) -> None:
        try:
            events = feed(data)
        except ProtocolError as exc:
            self._events(exc.events)
            self._drop_observer()  # relay the rest opaquely; open requests are not reported
            self.requests.clear()
            return
        if events:
            self._events(events)

    # --- observer events --------------------------------------------------------------------

    def _events(self, events: list[Any]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is h1.RequestStarted:
                self._started(ev.seq, "http1", ev.method, ev.authority, ev.path)
            elif kind is h1.RequestEnded:
                req = self.requests.get(ev.seq)
                if req is not None:
                    req.request_bytes = ev.body_bytes
            elif kind is h1.ResponseStarted or kind is h2.Http2ResponseHeaders:
                key = ev.seq if kind is h1.ResponseStarted else ev.stream_id
                self._first_byte(key, ev.status)
            elif kind is h1.ResponseEnded:
                self._ended(ev.seq, reset=False, response_bytes=ev.body_bytes)
            elif kind is h1.ExchangeAborted:
                self._ended(ev.seq, reset=True, response_bytes=0)
            elif kind is h1.Upgraded or kind is h1.ConnectTunnel:
                self._drop_observer()  # the rest is not HTTP
            elif kind is h2.Http2RequestStarted:
                protocol = "grpc" if ev.grpc else "http2"
                self._started(ev.stream_id, protocol, ev.method, ev.authority, ev.path)
            elif kind is h2.Http2StreamEnded:
                req = self.requests.get(ev.stream_id)
                if req is not None:
                    req.request_bytes = ev.request_bytes
                    if req.status is None and ev.status is not None:
                        req.status = ev.status
                self._ended(
                    ev.stream_id,
                    reset=ev.reset,
                    response_bytes=ev.response_bytes,
                    grpc_status=ev.grpc_status,
                )

    def _started(self, key: int, protocol: str, method: str, authority: str, path: str) -> None:
        now, wall = time.monotonic(), time.time()
        tapped = self.sink.tapping(self.src, self.dst)
        req = _Request(next(_request_ids), protocol, method, authority, path, now, wall, tapped)
        self.requests[key] = req
        if tapped:
            self._tap_started(req.req_id, self.direction, self.dst, req)
        peer = self.for_peer
        if peer is not None:
            req.peer_req_id = next(_request_ids)
            if self.sink.tapping(self.src, peer):
                req.peer_tapped = True
                self._tap_started(req.peer_req_id, "inbound", peer, req)

    def _tap_started(self, req_id: int, direction: str, dst: Peer, req: _Request) -> None:
        self.sink.request_started(
            RequestStarted(
                req_id=req_id,
                conn_id=self.conn_id,
                direction=direction,
                src=self.src,
                dst=dst,
                protocol=req.protocol,
                tls=self.tls,
                method=req.method,
                authority=req.authority,
                path=req.path,
                at=req.started_at,
                src_port=self.src_port,
                dst_port=self.dst_port,
            )
        )

    def _first_byte(self, key: int, status: int) -> None:
        req = self.requests.get(key)
        if req is None or req.first_byte is not None:
            return
        req.first_byte = time.monotonic() - req.started
        req.status = status
        if self.on_first_byte is not None:
            self.on_first_byte(req.first_byte)
        if req.tapped:
            self.sink.response_started(req.req_id, status, time.time())
        if req.peer_tapped:
            self.sink.response_started(req.peer_req_id, status, time.time())

    def _ended(
        self, key: int, *, reset: bool, response_bytes: int, grpc_status: int | None = None
    ) -> None:
        req = self.requests.pop(key, None)
        if req is None:
            return
        # Positional, in the field order: keywords cost a dataclass __init__ three times as
        # much, and this runs for every request (test_dp_l7relay.py checks each field).
        exchange = (
            req.protocol,  # protocol
            self.tls,  # tls
            req.method,  # method
            req.authority,  # authority
            req.path,  # path
            req.status,  # status
            grpc_status,  # grpc_status
            outcome_label(req.status, grpc_status=grpc_status, stream_failed=reset),
            reset,  # reset
            req.first_byte,  # latency_first_byte_s
            time.monotonic() - req.started,  # latency_s
            req.request_bytes,  # request_bytes
            response_bytes,  # response_bytes
            req.started_at,  # started_at
        )
        sink = self.sink
        # req_id, conn_id, direction, src, dst, then the exchange.
        sink.request(
            RequestObserved(req.req_id, self.conn_id, self.direction, self.src, self.dst, *exchange)
        )
        peer = self.for_peer
        if peer is not None:  # then every request has its peer_req_id (_started)
            # The same request as the destination's agent would have reported it (observe
            # once): its inbound side, timed from here (the tunnel's round trip included).
            sink.request(
                RequestObserved(req.peer_req_id, self.conn_id, "inbound", self.src, peer, *exchange)
            )


MAX_SERVER_PREFIX = 16 * 1024


def peer_port(sock: socket.socket) -> int:
    """The port of a connected socket's peer, 0 once it is gone (for tap events only)."""
    try:
        return int(sock.getpeername()[1])
    except (OSError, IndexError):
        return 0


def _h2_settings_first(data: bytes | bytearray) -> bool:
    """Do `data` start like an HTTP/2 server preface: a SETTINGS frame on stream 0?"""
    if len(data) < 9:
        return len(data) >= 4 and data[3] == 0x04
    return data[3] == 0x04 and data[4] in (0, 1) and bytes(data[5:9]) == b"\x00\x00\x00\x00"
