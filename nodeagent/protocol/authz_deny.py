"""Answering a client the authorization policy denies, without the app (sans-io).

When a connection's client may make no request at all, the destination's agent never connects
to the app: it speaks the client's protocol itself and answers every request it makes, so an
HTTP client sees why (HTTP/1: 403 per request; HTTP/2: 403 per stream; gRPC: PERMISSION_DENIED
as a trailers-only response) and the app sees nothing. Bytes in, bytes out; `denied` lists the
requests answered since the last `take_denied()`, for metrics and tap.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import hpack
import httptools

from nodeagent.protocol.http2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
)

GRPC_PERMISSION_DENIED = 7
MAX_HEADER_BLOCK = 1 << 18
MAX_FRAME = 1 << 14  # we announce no larger SETTINGS_MAX_FRAME_SIZE, so clients send no larger
_FRAME = struct.Struct(">HBBBL")
NO_ERROR, PROTOCOL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x6


@dataclass(frozen=True, slots=True)
class DeniedRequest:
    method: str
    path: str
    grpc: bool


class DenyError(Exception):
    """The client's bytes are not the protocol they began as: close the connection."""


def forbidden_http1(reason: str, *, keep_alive: bool) -> bytes:
    body = f"nodemesh: forbidden: {reason}\n".encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "l5d-proxy-error: unauthorized request\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Http1DenyAll:
    """Answers every HTTP/1 request with 403 (keep-alive as the client asked)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.parser = httptools.HttpRequestParser(self)
        self.out = bytearray()
        self.denied: list[DeniedRequest] = []
        self.done = False  # the client asked to close, or upgraded: close after writing
        self._url = b""

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEADER_BLOCK:
            raise DenyError("request target too long")

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        path = self._url.decode("latin-1")
        if not path.startswith("/"):  # absolute-form
            rest = path.split("://", 1)[-1]
            path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        self.denied.append(DeniedRequest(method, path, grpc=False))
        keep = bool(self.parser.should_keep_alive()) and not self.parser.should_upgrade()
        self.out += forbidden_http1(self.reason, keep_alive=keep)
        if not keep:
            self.done = True

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.done = True
        except httptools.HttpParserError as exc:
            raise DenyError(f"not HTTP/1: {exc}") from exc
        out, self.out = bytes(self.out), bytearray()
        return out

    def take_denied(self) -> list[DeniedRequest]:
        out, self.denied = self.denied, []
        return out


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload


def header_frames(sid: int, block: bytes, *, end_stream: bool) -> bytes:
    """A header block as HEADERS (+ CONTINUATION) frames of at most MAX_FRAME bytes."""
    chunks = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = bytearray()
    for i, chunk in enumerate(chunks):
        flags = END_HEADERS if i == len(chunks) - 1 else 0
        if i == 0:
            flags |= END_STREAM if end_stream else 0
        out += frame(HEADERS if i == 0 else CONTINUATION, flags, sid, chunk)
    return bytes(out)


def static_only_block(headers: list[tuple[str, str]]) -> bytes:
    """A header block that leaves the peer's HPACK dynamic table as it was (never-indexed
    literals), so it can go between blocks another encoder wrote on the same connection."""
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # nothing to refer to, nothing added
    block = encoder.encode([hpack.NeverIndexedHeaderTuple(k, v) for k, v in headers])
    # The fresh encoder starts with a table-size update to 0: drop it, the peer's table stays.
    if block[:1] == b"\x20":
        block = block[1:]
    return block


def denial_headers(reason: str, *, grpc: bool) -> list[tuple[str, str]]:
    if grpc:
        return [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", str(GRPC_PERMISSION_DENIED)),
            ("grpc-message", _grpc_message(reason)),
        ]
    return [(":status", "403"), ("content-type", "text/plain"), ("content-length", "0")]


def _grpc_message(text: str) -> str:
    """grpc-message is percent-encoded outside printable ASCII (and % itself)."""
    return "".join(
        c if 0x20 <= ord(c) < 0x7F and c != "%" else "".join(f"%{b:02X}" for b in c.encode())
        for c in text
    )


class H2DenyAll:
    """An HTTP/2 server that answers every stream with a denial: gRPC requests (content-type
    application/grpc...) get trailers-only PERMISSION_DENIED, others :status 403."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.buf = bytearray()
        self.preface_seen = False
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self.block: bytearray | None = None
        self.block_sid = 0
        self.block_end_stream = False
        self.answered: set[int] = set()
        self.last_sid = 0
        self.denied: list[DeniedRequest] = []
        self.done = False
        self.out = bytearray(frame(SETTINGS, 0, 0))  # our (empty) SETTINGS go first

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        self.buf += data
        if not self.preface_seen:
            if len(self.buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(self.buf)):
                    raise DenyError("not an HTTP/2 client preface")
                return self._flush()
            if bytes(self.buf[: len(PREFACE)]) != PREFACE:
                raise DenyError("not an HTTP/2 client preface")
            del self.buf[: len(PREFACE)]
            self.preface_seen = True
        while len(self.buf) >= 9 and not self.done:
            hi, lo, ftype, flags, sid = _FRAME.unpack_from(self.buf)
            length = (hi << 8) | lo
            sid &= 0x7FFFFFFF
            if length > MAX_FRAME:
                self._goaway(FRAME_SIZE_ERROR)
                break
            if len(self.buf) < 9 + length:
                break
            payload = bytes(self.buf[9 : 9 + length])
            del self.buf[: 9 + length]
            self._frame(ftype, flags, sid, payload)
        return self._flush()

    def _flush(self) -> bytes:
        out, self.out = bytes(self.out), bytearray()
        return out

    def _goaway(self, code: int) -> None:
        self.out += frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_sid, code))
        self.done = True

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self.block is not None and ftype != CONTINUATION:
            self._goaway(PROTOCOL_ERROR)
            return
        if ftype == SETTINGS:
            if not flags & 0x1:
                self.out += frame(SETTINGS, 0x1, 0)  # ACK
        elif ftype == PING:
            if not flags & 0x1:
                self.out += frame(PING, 0x1, 0, payload)
        elif ftype == GOAWAY:
            self.done = True
        elif ftype == DATA:
            # Hand the flow-control credit back so later requests on this connection still
            # get through to their denial; the stream itself was answered already.
            if payload:
                credit = struct.pack(">L", len(payload))
                self.out += frame(WINDOW_UPDATE, 0, 0, credit)
        elif ftype == HEADERS:
            body = payload
            if flags & PADDED:
                pad = body[0]
                body = body[1 : len(body) - pad]
            if flags & PRIORITY_FLAG:
                body = body[5:]
            self.block, self.block_sid = bytearray(body), sid
            self.block_end_stream = bool(flags & END_STREAM)
            if flags & END_HEADERS:
                self._block_done()
        elif ftype == CONTINUATION:
            if self.block is None or sid != self.block_sid:
                self._goaway(PROTOCOL_ERROR)
                return
            self.block += payload
            if len(self.block) > MAX_HEADER_BLOCK:
                self._goaway(PROTOCOL_ERROR)
                return
            if flags & END_HEADERS:
                self._block_done()
        # PRIORITY, RST_STREAM, WINDOW_UPDATE, unknown frames: nothing to answer

    def _block_done(self) -> None:
        assert self.block is not None
        block, sid, ended = bytes(self.block), self.block_sid, self.block_end_stream
        self.block = None
        try:
            headers = self.decoder.decode(block, raw=False)
        except hpack.HPACKError:
            self._goaway(0x9)  # COMPRESSION_ERROR: the connection cannot go on
            return
        if sid in self.answered or sid % 2 == 0 or sid <= self.last_sid:
            return  # trailers of a stream already answered, or nonsense: decoded, ignored
        self.last_sid = sid
        fields = dict((str(k), str(v)) for k, v in headers)
        grpc = fields.get("content-type", "").startswith("application/grpc")
        self.denied.append(DeniedRequest(fields.get(":method", ""), fields.get(":path", ""), grpc))
        self.answered.add(sid)
        block_out = static_only_block(denial_headers(self.reason, grpc=grpc))
        self.out += header_frames(sid, block_out, end_stream=True)
        if not ended:
            # Done with the stream: the client need not send the rest of its body (RFC 9113
            # 8.1: a complete response, then RST_STREAM NO_ERROR).
            self.out += frame(RST_STREAM, 0, sid, struct.pack(">L", NO_ERROR))

    def take_denied(self) -> list[DeniedRequest]:
        out, self.denied = self.denied, []
        return out
