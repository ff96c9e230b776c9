"""HTTP/1.1 messages for a proxy that terminates both sides: llhttp parses, we write the heads.

Sans-io, for the agent's L7 path (nodeagent/proxy/l7/http1.py): `RequestReader` reads what an
app's client sends (pipelined requests come out in order), `ResponseReader` one upstream
answer to one request, and the `*_head` functions plus `BodyWriter` write messages with the
framing rules RFC 9112 sets (and h11 enforced for us before): Content-Length or chunked, no
body for HEAD/204/304, 1xx answers skipped, HTTP/1.0 peers get no chunked encoding and a closed
connection, `Connection: close` honoured both ways.

Events are plain values, in order: a `RequestHead`/`ResponseHead`, then body pieces as `bytes`,
then `Trailers` when a chunked body had trailer fields, then `END`; `next_event()` gives None
when it needs more bytes. Malformed input makes it raise
`Http1Error`, once the events parsed before it were taken (a good pipelined request before a
bad one is still answered).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import httptools

from nodeagent.protocol.errors import ProtocolError

MAX_HEADER_BYTES = 64 * 1024  # a request line or status line plus headers larger is refused
Headers = list[tuple[bytes, bytes]]


class Http1Error(ProtocolError):
    """Malformed HTTP/1 input, or a head that cannot be written safely."""


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Final = _End()  # the message's body is over


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: Headers
    http11: bool  # HTTP/1.1 (else 1.0)
    keep_alive: bool  # the client may send another request on this connection
    chunked: bool  # the body comes chunked (else Content-Length, or none)
    upgrade: bool  # CONNECT, or an Upgrade the parser switched for: nothing after it is HTTP


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: Headers
    http11: bool
    keep_alive: bool  # HTTP/1.1 without `Connection: close` (the body's framing aside)


@dataclass(slots=True)
class Trailers:
    """The trailer fields after a chunked body's last chunk (RFC 9112 7.1.2), as they came."""

    headers: Headers


RequestEvent = RequestHead | bytes | Trailers | _End
ResponseEvent = ResponseHead | bytes | Trailers | _End
# Fields a trailer may not carry (RFC 9110 6.5.1: framing, routing, connection-specific): a
# recipient that merges trailers into the head would take them as the message's own.
NOT_IN_TRAILERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
    }
)


def _connection_close(headers: Headers) -> bool:
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            if b"close" in (v.strip().lower() for v in value.split(b",")):
                return True
    return False


def _only_chunked(value: bytes) -> None:
    """Bodies are passed on re-chunked: another transfer coding (gzip, ...) would reach the
    other side without its label. h11 refused them too; nothing sends them in practice."""
    if value.strip().lower() != b"chunked":
        raise Http1Error(f"Transfer-Encoding {value!r}: only chunked is supported")


class _Reader:
    events: deque[Any]
    failed: Http1Error | None

    def next_event(self) -> Any:
        """The next event; None: more bytes are needed. Raises the input's Http1Error once
        the events before it were taken."""
        if self.events:
            return self.events.popleft()
        if self.failed is not None:
            raise self.failed
        return None


class RequestReader(_Reader):
    """The requests of one client connection, in order (pipelining included)."""

    def __init__(self) -> None:
        self.events: deque[RequestEvent] = deque()
        self.in_message = False  # between a request's first byte and its END
        self.failed: Http1Error | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._in_head = False
        self._url = b""
        self._headers: Headers = []
        self._size = 0
        self._fed = 0  # bytes fed while a head was open
        self._chunked = False
        self._upgrade_body = False  # an Upgrade or CONNECT head that declared a body
        self._trailers: Headers = []

    def next_event(self) -> RequestEvent | None:
        event: RequestEvent | None = super().next_event()
        return event

    def feed(self, data: bytes) -> None:
        """Parse `data` (b"": the client closed its side)."""
        if self.failed is not None:
            return
        if not data:
            if self.in_message:
                self.failed = Http1Error("the client closed in the middle of a request")
            return
        queued = len(self.events)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # CONNECT or an Upgrade: the L7 path never switches (it answers such a request
            # itself), so what follows is read as HTTP again, as after a declined upgrade.
            if self.in_message:
                self.in_message = False
                self.events.append(END)
            if self._upgrade_body:
                # httptools ends the message at an upgrade's head: a body it declared would
                # be read as the next requests (smuggled); the head's answer closes instead.
                self.failed = Http1Error("a body after an Upgrade or CONNECT head")
                return
            self._parser = httptools.HttpRequestParser(self)
            self.feed(data[int(exc.args[0]) :])
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self.failed = cause if isinstance(cause, Http1Error) else Http1Error(str(exc))
            return
        if self._in_head:
            # A header that never ends is held whole by the parser before any callback.
            self._fed += len(data)
            if self._fed > 2 * MAX_HEADER_BYTES:
                self.failed = Http1Error(f"request head over {MAX_HEADER_BYTES} bytes")
        elif self.in_message and len(self.events) == queued:
            # Bytes that give no body: chunk extensions or trailers, which httptools holds
            # (a trailer field whole, copied again on each read): bounded like a head.
            self._fed += len(data)
            if self._fed > 2 * MAX_HEADER_BYTES:
                self.failed = Http1Error(
                    f"chunk extensions or trailers over {MAX_HEADER_BYTES} bytes"
                )
        else:
            self._fed = 0

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.in_message = self._in_head = True
        self._url = b""
        self._headers = []
        self._size = self._fed = 0
        self._chunked = False
        self._trailers = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > MAX_HEADER_BYTES:
            raise Http1Error(f"request head and trailers over {MAX_HEADER_BYTES} bytes")
        if not self._in_head:
            self._trailers.append((name, value))
            return
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            _only_chunked(value)
            self._chunked = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        http11 = parser.get_http_version() == "1.1"
        headers = self._headers
        hosts = sum(len(n) == 4 and n.lower() == b"host" for n, _ in headers)
        if http11 and not hosts:
            raise Http1Error("an HTTP/1.1 request without a Host header")
        if hosts > 1:  # RFC 9112 3.2: routes read the first, a server may read the last
            raise Http1Error("a request with more than one Host header")
        method = parser.get_method()
        self._in_head = False
        upgrade = method == b"CONNECT" or parser.should_upgrade()
        self._upgrade_body = upgrade and (
            self._chunked
            or any(
                len(n) == 14 and n.lower() == b"content-length" and v != b"0" for n, v in headers
            )
        )
        self.events.append(
            RequestHead(
                method,
                self._url,
                headers,
                http11,
                http11 and not _connection_close(headers) and not self._upgrade_body,
                self._chunked,
                upgrade,
            )
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self._trailers:
            self.events.append(Trailers(self._trailers))
            self._trailers = []
        self.events.append(END)


class ResponseReader(_Reader):
    """The answer to one request sent upstream (1xx answers skipped)."""

    def __init__(self, method: bytes) -> None:
        self.events: deque[ResponseEvent] = deque()
        self.failed: Http1Error | None = None
        self.head: ResponseHead | None = None
        self.done = False  # END was queued
        self.stray = False  # bytes came after the end of the answer: do not reuse the connection
        self.until_eof = False  # the body ends when the upstream closes
        self._head_only = method == b"HEAD"
        self._block = bytearray()  # HEAD: the head being cut out (llhttp would expect a body)
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: Headers = []
        self._trailers: Headers = []
        self._size = 0
        self._fed = 0

    def next_event(self) -> ResponseEvent | None:
        event: ResponseEvent | None = super().next_event()
        return event

    @property
    def reusable(self) -> bool:
        """The answer ended cleanly and the upstream will take another request."""
        head = self.head
        return self.done and not self.stray and head is not None and head.keep_alive

    def feed(self, data: bytes) -> None:
        """Parse `data` (b"": the upstream closed, which ends a body read until then)."""
        if self.done or self.failed is not None:
            self.stray = self.stray or bool(data)
            return
        if not data:
            if self.head is not None and self.until_eof:
                self.done = True
                self.events.append(END)
            elif self.head is None:
                self.failed = Http1Error("the upstream closed before answering")
            else:
                self.failed = Http1Error("the upstream ended the response early")
            return
        try:
            queued = len(self.events)
            if self._head_only:
                self._feed_heads(data)
            else:
                self._run(data)
                if self.head is None or (not self.done and len(self.events) == queued):
                    # A head, or bytes that give no body (chunk extensions, trailers)
                    self._fed += len(data)
                    if self._fed > 2 * MAX_HEADER_BYTES:
                        raise Http1Error(f"response head or trailers over {MAX_HEADER_BYTES} bytes")
                else:
                    self._fed = 0
        except Http1Error as exc:
            self.failed = exc

    def _run(self, data: bytes | bytearray) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise Http1Error("the upstream switched protocols unasked") from exc
        except httptools.HttpParserError as exc:
            if self.done:  # what followed the answer is not ours to judge
                self.stray = True
                return
            cause = exc.__context__
            raise (cause if isinstance(cause, Http1Error) else Http1Error(str(exc))) from None

    def _feed_heads(self, data: bytes) -> None:
        """HEAD: feed llhttp one head at a time (1xx ones, then the final one), never a byte
        after it: the final head's framing headers describe a body that is not sent."""
        self._block += data
        while not self.done:
            end = _head_end(self._block)
            if end < 0:
                if len(self._block) > MAX_HEADER_BYTES:
                    raise Http1Error(f"response head over {MAX_HEADER_BYTES} bytes")
                return
            block = self._block[:end]
            del self._block[:end]
            self._run(block)
            if self.head is not None:
                self.done = True
                self.events.append(END)
        self.stray = bool(self._block)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.done:
            self.stray = True
            raise Http1Error("a second answer")
        self._reason = b""
        self._headers = []
        self._size = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > MAX_HEADER_BYTES:
            raise Http1Error(f"response head and trailers over {MAX_HEADER_BYTES} bytes")
        if self.head is not None:
            self._trailers.append((name, value))
            return
        if len(name) == 17 and name.lower() == b"transfer-encoding":
            _only_chunked(value)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise Http1Error("the upstream switched protocols unasked")
            return  # 1xx: informational, the final answer follows
        headers = self._headers
        http11 = parser.get_http_version() == "1.1"
        self.head = ResponseHead(
            status, self._reason, headers, http11, http11 and not _connection_close(headers)
        )
        if not self._head_only and status not in (204, 304):
            self.until_eof = _framing(headers)[0] == "eof"
        self.events.append(self.head)

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.events.append(body)

    def on_message_complete(self) -> None:
        if self.head is None or self.done:
            return  # the end of a 1xx answer (or a HEAD head fed alone)
        self.done = True
        if self._trailers:
            self.events.append(Trailers(self._trailers))
        self.events.append(END)


def _head_end(block: bytearray) -> int:
    """Where the head in `block` ends (-1: not yet): its empty line, whether the lines end in
    CRLF or a bare LF. The head goes to llhttp whole either way, which refuses a bare LF as it
    does in any answer: a HEAD's answer ends there too instead of waiting for a CRLF that an
    upstream writing bare LFs never sends."""
    crlf = block.find(b"\n\r\n")  # also the end of b"\r\n\r\n"
    lf = block.find(b"\n\n")
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


# -- writing -----------------------------------------------------------------------------------


def _framing(headers: Headers) -> tuple[str, int]:
    """How a body with these headers is framed: ("chunked", 0), ("length", n) or ("eof", 0)
    (RFC 9112 6.3: Transfer-Encoding beats Content-Length; a response with neither runs until
    the connection closes)."""
    length = -1
    for name, value in headers:
        n = len(name)
        if n == 17 and name.lower() == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            return ("chunked", 0) if codings[-1] == b"chunked" else ("eof", 0)
        if n == 14 and length < 0 and name.lower() == b"content-length":
            first = value.split(b",")[0].strip()
            if first.isdigit():  # the parser checked a peer's; a route's set value may be junk
                length = int(first)
    return ("length", length) if length >= 0 else ("eof", 0)


def _without(headers: Headers, names: tuple[bytes, ...]) -> Headers:
    return [(n, v) for n, v in headers if n.lower() not in names]


def _lines(first: bytes, headers: Headers) -> bytes:
    head = b"".join([first, *(b"%s: %s\r\n" % hv for hv in headers), b"\r\n"])
    # A CR, LF or NUL inside a name, value or the first line would split or end the head
    # (request smuggling, header injection): the parser never hands us one, but a route's
    # configured value or rewrite could carry one.
    lines = len(headers) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines or b"\0" in head:
        raise Http1Error("a header or the request target holds CR, LF or NUL")
    return head


class BodyWriter:
    """Frames a body the way its head announced it."""

    __slots__ = ("chunked", "empty")

    def __init__(self, *, chunked: bool, empty: bool = False) -> None:
        self.chunked = chunked
        self.empty = empty  # HEAD, 204, 304: whatever the headers say, no body goes out

    def data(self, data: bytes) -> bytes:
        if self.empty or not data:
            return b""
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), data)
        return data

    def end(self, trailers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """The body's end; `trailers` go with it when it is chunked (else there is no place
        for them: Content-Length or HTTP/1.0), without the fields a trailer may not carry."""
        if not self.chunked or self.empty:
            return b""
        if not trailers:
            return b"0\r\n\r\n"
        kept = [(n, v) for n, v in trailers if n.lower() not in NOT_IN_TRAILERS]
        return _lines(b"0\r\n", kept)


def request_head(
    method: bytes, target: bytes, headers: Headers, *, chunked: bool
) -> tuple[bytes, BodyWriter]:
    """An HTTP/1.1 request head (Host first, as RFC 9110 7.2 asks) and its body's writer.
    `chunked`: the body's length is not known (the client sent it chunked)."""
    if chunked:
        headers = [*_without(headers, (b"content-length", b"transfer-encoding"))]
        headers.append((b"transfer-encoding", b"chunked"))
    if headers and headers[0][0].lower() != b"host":
        host = [(n, v) for n, v in headers if n.lower() == b"host"]
        headers = host + [(n, v) for n, v in headers if n.lower() != b"host"]
    if b" " in target or not target:
        raise Http1Error("a request target with a space, or empty")
    return _lines(b"%s %s HTTP/1.1\r\n" % (method, target), headers), BodyWriter(chunked=chunked)


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    method: bytes,
    peer_http11: bool,
    keep_alive: bool,
) -> tuple[bytes, BodyWriter, bool]:
    """A response head to a client whose request had `method`, its body's writer, and whether
    the client connection stays open after it. Framing follows the headers given (HEAD as if
    GET); a body of unknown length goes chunked to an HTTP/1.1 client and unframed, closing
    the connection, to an HTTP/1.0 one."""
    empty = method == b"HEAD" or status in (204, 304)
    kind = "length" if status in (204, 304) else _framing(headers)[0]
    chunked = False
    if kind != "length":
        headers = _without(headers, (b"content-length", b"transfer-encoding"))
        if peer_http11:
            headers.append((b"transfer-encoding", b"chunked"))
            chunked = True
        elif method != b"HEAD":
            keep_alive = False
    if not keep_alive:
        tokens = [b"close"]
        for name, value in headers:
            if name.lower() == b"connection":
                tokens += [t.strip() for t in value.split(b",") if t.strip().lower() != b"close"]
                tokens = [t for t in tokens if t.lower() != b"keep-alive"]
        headers = [*_without(headers, (b"connection",)), (b"connection", b", ".join(tokens))]
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
    head = _lines(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)
    return head, BodyWriter(chunked=chunked, empty=empty), keep_alive
