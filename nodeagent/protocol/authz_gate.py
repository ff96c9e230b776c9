"""Per-request authorization of an HTTP/1 connection (sans-io), for a client only L7 rules
(method, path) can allow: each request's head is held until it is decided; an allowed request
goes to the app whole (head and body), a denied one never does: once the app has answered every
request before it, the client gets 403 and the connection closes (the rest of what the client
sent is discarded, as the app never saw its beginning).

The framing is the request's own (RFC 9112: Content-Length, chunked, or no body); an upgrade
or CONNECT that is allowed turns the connection into a tunnel, no longer gated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto

import httptools

from nodeagent.protocol.authz_deny import DeniedRequest, forbidden_http1

MAX_HEAD = 64 * 1024


class GateError(Exception):
    """Not HTTP/1 that can be framed: the connection is closed."""


@dataclass(slots=True)
class GateOut:
    forward: bytes = b""  # to the app
    reply: bytes = b""  # to the client (after whatever the app sent so far)
    close: bool = False  # close both sides once `reply` is written
    denied: list[DeniedRequest] = field(default_factory=list)


class _Body(Enum):
    HEAD = auto()  # reading a request head
    LENGTH = auto()  # Content-Length bytes to pass
    CHUNK_SIZE = auto()
    CHUNK_DATA = auto()
    CHUNK_CRLF = auto()
    TRAILERS = auto()
    TUNNEL = auto()  # allowed upgrade/CONNECT: everything passes
    DENIED = auto()  # nothing passes any more


Decide = Callable[[str, str], "tuple[bool, str]"]  # (method, path) -> (allowed, reason)


class Http1Gate:
    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.state = _Body.HEAD
        self.buf = bytearray()
        self.left = 0
        self.outstanding = 0  # requests passed to the app whose responses have not ended
        self.pending_reply: bytes | None = None
        self.responses = _ResponseCounter()
        self._upgrade_after = False

    # -- client -> app -------------------------------------------------------------------

    def client(self, data: bytes) -> GateOut:
        out = GateOut()
        if self.state is _Body.TUNNEL:
            out.forward = data
            return out
        if self.state is _Body.DENIED:
            return out
        self.buf += data
        fwd = bytearray()
        while self.buf and self.state not in (_Body.DENIED, _Body.TUNNEL):
            if not self._step(fwd, out):
                break
        state: _Body = self.state  # _step() moved it on (mypy would keep the loop's narrowing)
        if state is _Body.TUNNEL and self.buf:
            fwd += self.buf
            self.buf.clear()
        out.forward = bytes(fwd)
        if state is _Body.DENIED:
            self.buf.clear()
            if self.outstanding == 0 and self.pending_reply is not None:
                out.reply, out.close, self.pending_reply = self.pending_reply, True, None
        return out

    def _step(self, fwd: bytearray, out: GateOut) -> bool:
        """Consume what the state allows from `buf`; False when more bytes are needed."""
        s = self.state
        if s is _Body.HEAD:
            while self.buf[:2] == b"\r\n":  # tolerated empty lines between requests
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise GateError("request head too long")
                return False
            head = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            self._head(head, fwd, out)
            return True
        if s is _Body.LENGTH:
            n = min(self.left, len(self.buf))
            fwd += self.buf[:n]
            del self.buf[:n]
            self.left -= n
            if self.left == 0:
                self._message_done()
            return bool(self.buf) or self.left == 0
        if s is _Body.CHUNK_SIZE or s is _Body.TRAILERS:
            end = self.buf.find(b"\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise GateError("chunk size line too long")
                return False
            line = bytes(self.buf[: end + 2])
            del self.buf[: end + 2]
            fwd += line
            if s is _Body.TRAILERS:
                if line == b"\r\n":
                    self._message_done()
                return True
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise GateError(f"bad chunk size {line[:20]!r}") from None
            if size == 0:
                self.state = _Body.TRAILERS
            else:
                self.state, self.left = _Body.CHUNK_DATA, size
            return True
        if s is _Body.CHUNK_DATA:
            n = min(self.left, len(self.buf))
            fwd += self.buf[:n]
            del self.buf[:n]
            self.left -= n
            if self.left == 0:
                self.state, self.left = _Body.CHUNK_CRLF, 2
            return True
        if s is _Body.CHUNK_CRLF:
            n = min(self.left, len(self.buf))
            fwd += self.buf[:n]
            del self.buf[:n]
            self.left -= n
            if self.left == 0:
                self.state = _Body.CHUNK_SIZE
            return True
        return False

    def _head(self, head: bytes, fwd: bytearray, out: GateOut) -> None:
        lines = head[:-4].split(b"\r\n")
        try:
            method_b, target_b, version = lines[0].split(b" ")
        except ValueError:
            raise GateError(f"bad request line {lines[0][:60]!r}") from None
        if not version.startswith(b"HTTP/1."):
            raise GateError(f"not HTTP/1: {version[:20]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise GateError(f"bad header line {line[:60]!r}")
            key = name.lower()
            if key == b"content-length" and key in headers and headers[key] != value.strip():
                raise GateError("conflicting Content-Length")
            headers[key] = value.strip()
        method = method_b.decode("ascii", "replace")
        target = target_b.decode("latin-1")
        path = target
        if not path.startswith("/") and method != "CONNECT":
            rest = path.split("://", 1)[-1]
            path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        allowed, reason = self.decide(method, path)
        if not allowed:
            out.denied.append(DeniedRequest(method, path, grpc=False))
            self.state = _Body.DENIED
            self.pending_reply = forbidden_http1(reason, keep_alive=False)
            return
        fwd += head
        self.outstanding += 1
        te = headers.get(b"transfer-encoding", b"").lower()
        upgrade = method == "CONNECT" or b"upgrade" in headers.get(b"connection", b"").lower()
        if te:
            if not te.endswith(b"chunked"):
                raise GateError("a request body without chunked framing cannot be delimited")
            self.state = _Body.CHUNK_SIZE
        elif b"content-length" in headers:
            try:
                self.left = int(headers[b"content-length"])
            except ValueError:
                raise GateError("bad Content-Length") from None
            if self.left < 0:
                raise GateError("bad Content-Length")
            self.state = _Body.LENGTH
            if self.left == 0:
                self._message_done()
        else:
            self._message_done()
        if upgrade:
            # Whatever the app answers (101 or not), an allowed upgrade is not gated further:
            # a refused upgrade leaves a client that would not reuse the connection for HTTP.
            self.state = _Body.TUNNEL

    def _message_done(self) -> None:
        self.state = _Body.HEAD

    # -- app -> client -------------------------------------------------------------------

    def server(self, data: bytes) -> GateOut:
        """Count the app's finished responses; a held denial goes out after the last one."""
        out = GateOut()
        if self.state is _Body.TUNNEL:
            return out
        self.outstanding -= self.responses.feed(data)
        if self.outstanding <= 0 and self.pending_reply is not None:
            self.outstanding = 0
            out.reply, out.close, self.pending_reply = self.pending_reply, True, None
        return out


class _ResponseCounter:
    """How many complete responses the app sent (1xx interim responses do not count)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.complete = 0
        self.broken = False

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200:
            self.complete += 1

    def feed(self, data: bytes) -> int:
        if self.broken:
            return 0
        before = self.complete
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.broken = True
        except httptools.HttpParserError:
            self.broken = True
        return self.complete - before
