"""HTTP/1.1 observer: request and response events from both directions, bytes untouched.

The caller relays every byte itself and feeds a copy here: client->server bytes to
``feed_client`` and server->client bytes to ``feed_server``, each *before* relaying them so
a response is never seen before its request. Events carry no clocks; stamp them on return.
Responses are matched to requests in order (pipelining). After ``Upgraded`` or
``ConnectTunnel`` the connection is no longer HTTP and the caller relays it opaquely.

Limits (documented rather than hidden): a request that asks to upgrade *and* carries a body
is switched at the end of its headers by llhttp, so if the server then declines, the body is
re-read as a new request and usually ends in ProtocolError (the caller falls back to opaque).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

import httptools

from nodeagent.protocol.errors import ProtocolError
from nodeagent.protocol.http1_events import (
    ConnectTunnel,
    ExchangeAborted,
    Http1Event,
    RequestEnded,
    RequestStarted,
    ResponseEnded,
    ResponseStarted,
    Upgraded,
)
from nodeagent.protocol.http1_states import CLIENT_TRANSITIONS, SERVER_TRANSITIONS, State, Trigger

__all__ = [
    "CLIENT_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "ConnectTunnel",
    "ExchangeAborted",
    "Http1Error",
    "Http1Observer",
    "ProtocolError",
    "RequestEnded",
    "RequestStarted",
    "ResponseEnded",
    "ResponseStarted",
    "State",
    "Trigger",
    "Upgraded",
]

# A request line plus headers larger than this is refused; real clients stay far below it.
MAX_HEADER_BYTES = 64 * 1024
# Bytes a client may send after an upgrade request before the server has answered it.
MAX_UPGRADE_BUFFER = 64 * 1024

# The short way (see _RequestSide.take_simple): whole messages of the commonest shape are read
# with two regular expressions instead of llhttp and a Python call per callback. The grammar
# is a strict part of what llhttp accepts (checked byte by byte in the tests); anything else
# (chunked, upgrades, HEAD/CONNECT, 1xx/204/304, close-delimited, a message cut across reads,
# bytes llhttp might refuse) is left to llhttp, which always sees whole messages only.
SHORT_WAY = True
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"  # a field name's bytes (RFC 9110 token)
_FIELD = _TCHAR + rb"+:[ \t]*[\x20-\x7e\t]*\r\n"
_SIMPLE_REQUEST = re.compile(
    rb"(GET|POST|PUT|DELETE|PATCH|OPTIONS) (/[!-~]*) HTTP/1\.1\r\n((?:" + _FIELD + rb")*)\r\n"
)
_SIMPLE_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([2-5]\d\d) [\t\x20-\x7e]*\r\n((?:" + _FIELD + rb")*)\r\n"
)
_FIELDS = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([\x20-\x7e\t]*)\r\n")
_NOT_SIMPLE = -1


def _body_length(fields: bytes, want_host: bool) -> tuple[int, bytes | None]:
    """(Content-Length or 0, the last Host when `want_host`) of a simple message's header
    fields; (_NOT_SIMPLE, None) when one of them needs llhttp: framing other than one
    Content-Length, an upgrade, a connection that closes."""
    length, host = _NOT_SIMPLE, None
    for name, value in _FIELDS.findall(fields):
        size = len(name)
        if size == 4:
            if want_host and name.lower() == b"host":
                host = value
        elif size == 14:
            if name.lower() == b"content-length":
                if length != _NOT_SIMPLE or not value.isdigit() or len(value) > 15:
                    return _NOT_SIMPLE, None
                length = int(value)
        elif size in (7, 10, 17):
            lname = name.lower()
            if lname in (b"upgrade", b"transfer-encoding"):
                return _NOT_SIMPLE, None
            if lname == b"connection" and value.lower() != b"keep-alive":
                return _NOT_SIMPLE, None
    if length == _NOT_SIMPLE:
        return (0 if want_host else _NOT_SIMPLE), host
    return length, host


class Http1Error(ProtocolError):
    """Malformed or out-of-order HTTP/1 traffic."""


@dataclass(slots=True)
class _Exchange:
    seq: int
    method: str
    authority: str
    upgrade: bool
    response_started: bool = False

    @property
    def headers_only(self) -> bool:
        # Responses to these have no body whatever their headers say, which llhttp cannot
        # know, so their header block is cut out before it reaches the parser.
        return self.method in ("HEAD", "CONNECT")


def _target(method: str, url: bytes, host: bytes | None) -> tuple[str, str]:
    """(authority, path) from the request target and Host header."""
    if method == "CONNECT":
        return url.decode("latin-1"), ""
    scheme_end = url.find(b"://")
    if not url.startswith(b"/") and scheme_end > 0:
        rest = url[scheme_end + 3 :]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        return authority.decode("latin-1"), path.decode("latin-1")
    return (host or b"").decode("latin-1"), url.decode("latin-1")


class _Side:
    """One direction: its parser, its state machine and the message being read."""

    transitions: dict[tuple[State, Trigger], State]
    name: str

    def __init__(self, observer: Http1Observer) -> None:
        self.observer = observer
        self.state = State.IDLE
        self.header_bytes = 0
        self.body_bytes = 0
        # llhttp refuses any byte after a message that closes the connection
        # (`Connection: close`, HTTP/1.0): from then on the short way leaves it to say so.
        self.short = SHORT_WAY

    def step(self, trigger: Trigger) -> None:
        new = self.transitions.get((self.state, trigger))
        if new is None:
            raise Http1Error(f"{self.name}: {trigger.name} not allowed in {self.state.name}")
        self.state = new

    def count_header(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_HEADER_BYTES:
            raise Http1Error(f"{self.name}: header section over {MAX_HEADER_BYTES} bytes")

    def run(
        self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser, data: bytes
    ) -> int | None:
        """Feed the parser; returns the upgrade offset when llhttp paused for one."""
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.state is State.TUNNEL:
                return None
            return int(exc.args[0])
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, Http1Error):
                raise cause from None
            if self.state is State.TUNNEL:
                return None  # llhttp objects to a 101 without Upgrade header; we switched
            raise Http1Error(f"{self.name}: {exc}") from exc
        if self.state is State.HEADERS:
            # Bounds what httptools accumulates for a header that never ends.
            self.count_header(len(data))
        return None


class _RequestSide(_Side):
    transitions = CLIENT_TRANSITIONS
    name = "request"

    def __init__(self, observer: Http1Observer) -> None:
        super().__init__(observer)
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.host: bytes | None = None
        self.exchange: _Exchange | None = None
        self.held = bytearray()  # client bytes sent while an upgrade awaits its answer

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.step(Trigger.BEGIN)
        self.url = b""
        self.host = None
        self.header_bytes = 0
        self.body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.count_header(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Inlined count_header: this runs for every header of every request.
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise Http1Error(f"request: header section over {MAX_HEADER_BYTES} bytes")
        if len(name) == 4 and name.lower() == b"host":
            self.host = value

    def on_headers_complete(self) -> None:
        self.step(Trigger.HEADERS_FINAL)
        self.header_bytes = 0
        method = self.parser.get_method().decode("ascii")
        authority, path = _target(method, self.url, self.host)
        obs = self.observer
        obs.seq += 1
        self.exchange = _Exchange(obs.seq, method, authority, self.parser.should_upgrade())
        obs.pending.append(self.exchange)
        obs.out.append(
            RequestStarted(obs.seq, method, authority, path, self.parser.get_http_version())
        )

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.step(Trigger.COMPLETE)
        assert self.exchange is not None
        self.observer.out.append(RequestEnded(self.exchange.seq, self.body_bytes))
        if not self.parser.should_keep_alive():
            self.short = False

    def feed(self, data: bytes) -> None:
        if self.state is State.TUNNEL:
            return
        if self.state is State.UPGRADE_PENDING:
            self.hold(data)
            return
        if self.state is State.IDLE and self.short:
            data = data[self.take_simple(data) :]
            if not data:
                return
        offset = self.run(self.parser, data)
        if offset is not None:
            self.step(Trigger.UPGRADE_REQUESTED)
            self.hold(data[offset:])

    def take_simple(self, data: bytes) -> int:
        """Report the whole simple requests at the start of `data` as llhttp would (the
        parser, between messages, never sees them); how many bytes they took."""
        obs, pos, end = self.observer, 0, len(data)
        while pos < end:
            m = _SIMPLE_REQUEST.match(data, pos)
            if m is None or m.end() - pos > MAX_HEADER_BYTES:
                break
            length, host = _body_length(m.group(3), True)
            if length == _NOT_SIMPLE or m.end() + length > end:
                break
            method = m.group(1).decode("ascii")
            obs.seq += 1
            authority = (host or b"").decode("latin-1")
            self.exchange = _Exchange(obs.seq, method, authority, False)
            obs.pending.append(self.exchange)
            obs.out.append(
                RequestStarted(obs.seq, method, authority, m.group(2).decode("latin-1"), "1.1")
            )
            obs.out.append(RequestEnded(obs.seq, length))
            pos = m.end() + length
        return pos

    def hold(self, data: bytes) -> None:
        self.held += data
        if len(self.held) > MAX_UPGRADE_BUFFER:
            raise Http1Error("request: too many bytes sent before the upgrade was answered")

    def upgrade_answered(self, *, accepted: bool) -> None:
        if accepted:
            self.step(Trigger.UPGRADE_ACCEPTED)
            self.held.clear()
            return
        self.step(Trigger.UPGRADE_DECLINED)
        held, self.held = bytes(self.held), bytearray()
        if held:
            self.feed(held)


class _ResponseSide(_Side):
    transitions = SERVER_TRANSITIONS
    name = "response"

    def __init__(self, observer: Http1Observer) -> None:
        super().__init__(observer)
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade_to = b""
        self.block = bytearray()  # header block being cut out for HEAD/CONNECT

    # httptools callbacks
    def on_message_begin(self) -> None:
        if not self.observer.pending:
            raise Http1Error("response: bytes from the server with no request outstanding")
        self.step(Trigger.BEGIN)
        self.exchange = self.observer.pending[0]
        self.header_bytes = 0
        self.body_bytes = 0
        self.content_length = None
        self.chunked = False
        self.upgrade_to = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise Http1Error(f"response: header section over {MAX_HEADER_BYTES} bytes")
        if len(name) not in (7, 14, 17):  # upgrade, content-length, transfer-encoding
            return
        lname = name.lower()
        if lname == b"content-length" and value.strip().isdigit():
            self.content_length = int(value)
        elif lname == b"transfer-encoding":
            self.chunked = b"chunked" in value.lower()
        elif lname == b"upgrade":
            self.upgrade_to = value

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        status = self.parser.get_status_code()
        obs = self.observer
        if 100 <= status < 200 and status != 101:
            self.step(Trigger.HEADERS_INTERIM)
            return
        switched = status == 101 or (ex.method == "CONNECT" and 200 <= status < 300)
        if switched:
            if status == 101 and not ex.upgrade:
                raise Http1Error("response: 101 to a request that did not ask to upgrade")
            self.step(Trigger.SWITCHED)
            obs.pending.popleft()
            obs.out.append(ResponseStarted(ex.seq, status))
            obs.out.append(ResponseEnded(ex.seq, 0))
            if status == 101:
                obs.out.append(Upgraded(ex.seq, self.upgrade_to.decode("latin-1")))
            else:
                obs.out.append(ConnectTunnel(ex.seq, ex.authority))
            obs.request.upgrade_answered(accepted=True)
            return
        self.step(Trigger.HEADERS_FINAL)
        ex.response_started = True
        obs.out.append(ResponseStarted(ex.seq, status))
        if ex.upgrade and obs.request.state is State.UPGRADE_PENDING:
            obs.request.upgrade_answered(accepted=False)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        state = self.state
        self.step(Trigger.COMPLETE)
        if state is State.BODY:
            self.finish()
        if not self.parser.should_keep_alive():
            self.short = False

    def finish(self) -> None:
        ex = self.observer.pending.popleft()
        self.observer.out.append(ResponseEnded(ex.seq, self.body_bytes))

    def needs_eof(self) -> bool:
        return self.state is State.BODY and self.content_length is None and not self.chunked

    # feeding
    def feed(self, data: bytes) -> None:
        pending = self.observer.pending
        while data and self.state is not State.TUNNEL:
            if self.state is State.IDLE and self.short and (taken := self.take_simple(data)):
                data = data[taken:]
            elif self.state is State.IDLE and pending and pending[0].headers_only:
                data = self.feed_header_block(data)
            elif any(ex.headers_only for ex in islice(pending, 1, None)):
                data = self.feed_until_response_ends(data)
            else:
                self.run(self.parser, data)
                data = b""

    def take_simple(self, data: bytes) -> int:
        """Report the whole simple responses at the start of `data` as llhttp would; how many
        bytes they took (0: the first needs llhttp, or is not all here)."""
        obs, pos, end = self.observer, 0, len(data)
        pending = obs.pending
        while pos < end and pending:
            ex = pending[0]
            if ex.upgrade or ex.headers_only:
                break
            m = _SIMPLE_RESPONSE.match(data, pos)
            if m is None or m.end() - pos > MAX_HEADER_BYTES:
                break
            status = int(m.group(1))
            length, _ = _body_length(m.group(2), False)
            if length == _NOT_SIMPLE or status in (204, 304) or m.end() + length > end:
                break
            pending.popleft()
            ex.response_started = True
            self.exchange = ex
            obs.out.append(ResponseStarted(ex.seq, status))
            obs.out.append(ResponseEnded(ex.seq, length))
            pos = m.end() + length
        return pos

    def feed_header_block(self, data: bytes) -> bytes:
        self.block += data
        end = self.block.find(b"\r\n\r\n")
        if end < 0:
            if len(self.block) > MAX_HEADER_BYTES:
                raise Http1Error(f"response: header section over {MAX_HEADER_BYTES} bytes")
            return b""
        head, rest = bytes(self.block[: end + 4]), bytes(self.block[end + 4 :])
        self.block.clear()
        ex = self.observer.pending[0]
        self.run(self.parser, head)
        if self.state is State.BODY and ex.method == "HEAD":
            self.step(Trigger.COMPLETE)
            self.finish()
        if ex.method == "HEAD" and self.state is State.IDLE:
            # llhttp still expects the body the headers announced: start clean.
            self.parser = httptools.HttpResponseParser(self)
        return rest

    def feed_until_response_ends(self, data: bytes) -> bytes:
        """Feed no byte past the end of the current response (a HEAD or CONNECT follows)."""
        current = self.observer.pending[0]
        pos = 0
        while pos < len(data):
            step = 1
            if self.state is State.BODY and not self.chunked and self.content_length:
                step = max(1, self.content_length - self.body_bytes)
            self.run(self.parser, data[pos : pos + step])
            pos += step
            pending = self.observer.pending
            if self.state is State.TUNNEL or not pending or pending[0] is not current:
                break
        return data[pos:]


class Http1Observer:
    """Watches one HTTP/1.x connection in both directions."""

    def __init__(self) -> None:
        self.seq = 0
        self.pending: deque[_Exchange] = deque()
        self.out: list[Http1Event] = []
        self.request = _RequestSide(self)
        self.response = _ResponseSide(self)
        self.failed: Http1Error | None = None
        self.closed = False

    @property
    def tunnel(self) -> bool:
        """True once the connection switched protocols: relay the rest opaquely."""
        return self.response.state is State.TUNNEL

    def feed_client(self, data: bytes) -> list[Http1Event]:
        return self._feed(self.request.feed, data)

    def feed_server(self, data: bytes) -> list[Http1Event]:
        return self._feed(self.response.feed, data)

    def _feed(self, feed: Callable[[bytes], None], data: bytes) -> list[Http1Event]:
        if self.failed is not None:
            raise Http1Error(f"observer already failed: {self.failed.reason}")
        if self.closed:
            raise Http1Error("observer is closed")
        self.out = []
        try:
            feed(data if type(data) is bytes else bytes(data))
        except Http1Error as exc:
            self.failed = exc
            raise Http1Error(exc.reason, events=self.out) from None
        return self.out

    def release(self) -> None:
        """Done with this observer: break its reference cycles (each parser holds its side's
        callbacks, each side its observer) so it is freed at once, not by the cycle collector."""
        for side in (self.request, self.response):
            side.parser = None  # type: ignore[assignment]
            side.observer = None  # type: ignore[assignment]

    def close(self) -> list[Http1Event]:
        """The connection ended: settle what is outstanding."""
        if self.closed or self.failed is not None or self.tunnel:
            self.closed = True
            return []
        self.closed = True
        out: list[Http1Event] = []
        if self.response.needs_eof() and self.pending:
            ex = self.pending.popleft()
            out.append(ResponseEnded(ex.seq, self.response.body_bytes))
        for ex in self.pending:
            reason = "response truncated" if ex.response_started else "no response"
            out.append(ExchangeAborted(ex.seq, reason))
        self.pending.clear()
        return out
