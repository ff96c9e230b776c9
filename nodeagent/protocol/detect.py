"""Protocol detection on a connection's first client bytes, and the decision built on it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from nodeagent.protocol import tls


class Protocol(StrEnum):
    HTTP1 = "http/1"
    HTTP2 = "h2"
    TLS = "tls"
    OPAQUE = "opaque"


# Ports whose protocols make the server talk first (SMTP, MySQL, ...) or are never HTTP; the
# same list Linkerd ships, so nobody waits for a client that will not speak.
KNOWN_OPAQUE_PORTS: frozenset[int] = frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211})

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# PRI is deliberately absent: "PRI * HTTP/2.0" is the HTTP/2 preface, not an HTTP/1 request.
HTTP1_METHODS: frozenset[bytes] = frozenset(
    {
        b"GET",
        b"HEAD",
        b"POST",
        b"PUT",
        b"DELETE",
        b"CONNECT",
        b"OPTIONS",
        b"TRACE",
        b"PATCH",
        b"PROPFIND",
        b"PROPPATCH",
        b"MKCOL",
        b"COPY",
        b"MOVE",
        b"LOCK",
        b"UNLOCK",
        b"REPORT",
        b"SEARCH",
        b"PURGE",
    }
)
_MAX_METHOD = max(len(m) for m in HTTP1_METHODS)
_HTTP1_VERSIONS = (b"HTTP/1.1\r\n", b"HTTP/1.0\r\n")
_VISIBLE = bytes(range(0x21, 0x7F))

# Past this many bytes without a verdict the connection is relayed opaquely: a request line
# this long is rare enough that losing its metrics beats buffering more.
MAX_PEEK = 16 * 1024


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the bytes alone say: ``protocol`` is None while more bytes are needed."""

    protocol: Protocol | None
    reason: str
    sni: str | None = None
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """How to treat a new connection.

    ``need_more`` means: read more bytes (from either side) and ask again.
    ``remember_server_first`` asks the caller to record the destination in its
    ServerFirstMemory so the next connection to it does not wait at all.
    ``cause`` is ``reason`` as one word out of CAUSES, for a metric label.
    """

    protocol: Protocol | None
    need_more: bool
    reason: str
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    remember_server_first: bool = False
    cause: str = "sniffed"


# Why a connection got its protocol: a metric label, so that a connection relayed opaque for
# a reason other than its own bytes (a remembered destination) is visible.
CAUSES = (
    "sniffed",  # the client's first bytes
    "known_port",
    "pod_opaque_port",
    "source",  # the source's agent decided (opaque ports of the route)
    "remembered_server_first",  # the destination's server was seen to speak first before
    "server_spoke_first",
    "incomplete_prefix",  # the client stalled mid-prefix, or the server answered it
    "max_peek",
    "closed",  # closed before anything decided
)


_NEED_MORE = Sniffed(None, "need more bytes")


def _sniff_http1(data: bytes) -> Sniffed | None:
    """HTTP/1.x request line, or None when the bytes cannot be one."""
    sp = data.find(b" ", 0, _MAX_METHOD + 1)
    if sp < 0:
        if len(data) <= _MAX_METHOD and any(m.startswith(data) for m in HTTP1_METHODS):
            return _NEED_MORE
        return None
    if data[:sp] not in HTTP1_METHODS:
        return None
    rest = data[sp + 1 :]
    sp2 = rest.find(b" ")
    target = rest if sp2 < 0 else rest[:sp2]
    if target.translate(None, _VISIBLE):
        return None
    if sp2 < 0:
        return _NEED_MORE
    if not target:
        return None
    tail = rest[sp2 + 1 :]
    for version in _HTTP1_VERSIONS:
        n = min(len(tail), len(version))
        if tail[:n] == version[:n]:
            if len(tail) >= len(version):
                return Sniffed(Protocol.HTTP1, "HTTP/1.x request line")
            return _NEED_MORE
    return None


def sniff(data: bytes) -> Sniffed:
    """Classify the first client bytes; a prefix that could still go several ways needs more."""
    if not data:
        return _NEED_MORE
    if H2_PREFACE.startswith(data[: len(H2_PREFACE)]):
        if len(data) >= len(H2_PREFACE):
            return Sniffed(Protocol.HTTP2, "HTTP/2 client preface")
        return _NEED_MORE
    if data[0] == tls.RECORD_HANDSHAKE:
        try:
            hello = tls.parse_client_hello(data)
        except tls.NotClientHello as exc:
            return Sniffed(Protocol.OPAQUE, f"not a TLS ClientHello: {exc}")
        if hello is None:
            return _NEED_MORE
        return Sniffed(Protocol.TLS, "TLS ClientHello", sni=hello.sni, alpn=hello.alpn)
    http1 = _sniff_http1(data)
    if http1 is not None:
        return http1
    return Sniffed(Protocol.OPAQUE, "no known protocol in the first bytes")


class ServerFirstMemory:
    """Destinations observed to speak first: a small LRU keyed by (ip, port) with expiry.

    Clocks are the caller's (pass a monotonic ``now``), which keeps this testable and free
    of I/O.
    """

    def __init__(self, *, capacity: int = 4096, ttl: float = 600.0) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError("capacity and ttl must be positive")
        self.capacity = capacity
        self.ttl = ttl
        self._expiry: OrderedDict[tuple[str, int], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def remember(self, ip: str, port: int, *, now: float) -> bool:
        """Remember (or refresh) a destination; True when it was not remembered before."""
        key = (ip, port)
        expiry = self._expiry.get(key)
        new = expiry is None or expiry <= now
        self._expiry[key] = now + self.ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self.capacity:
            self._expiry.popitem(last=False)
        return new

    def live(self, *, now: float) -> list[tuple[str, int, float]]:
        """(ip, port, seconds left) of every destination remembered now."""
        return [(ip, port, exp - now) for (ip, port), exp in self._expiry.items() if exp > now]

    def seen(self, ip: str, port: int, *, now: float) -> bool:
        key = (ip, port)
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= now:
            del self._expiry[key]
            return False
        self._expiry.move_to_end(key)
        return True


def decide(
    first_bytes: bytes,
    *,
    dst_ip: str,
    dst_port: int,
    opaque_ports: Collection[int] = KNOWN_OPAQUE_PORTS,
    pod_opaque_ports: Collection[int] = frozenset(),
    server_first: ServerFirstMemory | None = None,
    now: float = 0.0,
    timed_out: bool = False,
    server_spoke_first: bool = False,
    server_bytes: bytes = b"",
) -> Decision:
    """Decide how to observe a new outbound or inbound connection.

    Call it once before reading anything (``first_bytes=b""``): port rules and the
    server-first memory can settle the matter without waiting. ``timed_out`` says the
    detection timeout expired; ``server_spoke_first`` says the upstream sent
    ``server_bytes`` before the client sent anything. Only a server seen to speak first
    marks its destination as server-first (``remember_server_first``): a client that says
    nothing (a pooled or spare connection) proves nothing about the server, so a silent
    client past the timeout leaves the connection undecided, waiting for whichever side
    speaks. Nothing is held meanwhile: the relay forwards bytes whatever detection says.
    """
    if dst_port in opaque_ports:
        return Decision(
            Protocol.OPAQUE, False, f"port {dst_port} is a known opaque port", cause="known_port"
        )
    if dst_port in pod_opaque_ports:
        return Decision(
            Protocol.OPAQUE,
            False,
            f"port {dst_port} is marked opaque for the pod",
            cause="pod_opaque_port",
        )
    if server_first is not None and server_first.seen(dst_ip, dst_port, now=now):
        return Decision(
            Protocol.OPAQUE,
            False,
            "destination was seen to speak first",
            cause="remembered_server_first",
        )
    if server_spoke_first:
        if server_bytes.startswith(b"HTTP/"):
            # An HTTP server answering a connection that sent no request (408 on an idle
            # keep-alive connection): this connection is done for, but no banner protocol.
            return Decision(
                Protocol.OPAQUE,
                False,
                "server sent an HTTP response before any request",
                cause="server_spoke_first",
            )
        return Decision(
            Protocol.OPAQUE,
            False,
            "server spoke first",
            remember_server_first=True,
            cause="server_spoke_first",
        )
    sniffed = sniff(first_bytes)
    if sniffed.protocol is not None:
        return Decision(sniffed.protocol, False, sniffed.reason, sniffed.sni, sniffed.alpn)
    if timed_out:
        if not first_bytes:
            return Decision(None, True, "client silent past the detection timeout")
        return Decision(
            Protocol.OPAQUE,
            False,
            "detection timeout with an incomplete prefix",
            cause="incomplete_prefix",
        )
    if len(first_bytes) >= MAX_PEEK:
        return Decision(
            Protocol.OPAQUE, False, f"undecided after {MAX_PEEK} bytes", cause="max_peek"
        )
    return Decision(None, True, sniffed.reason)
