"""HTTP/2 observer: reads frames both ways, decodes header blocks, reports each stream's fate.

The caller relays the original bytes; nothing here is ever re-encoded. Every header block
of a direction is decoded in order (also trailers, pushes and streams nobody asked about)
because HPACK's dynamic table is shared by the whole connection: skipping one block would
desynchronise every later one. Feed each direction before relaying it, as with HTTP/1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import hpack

from nodeagent.protocol.errors import ProtocolError

__all__ = [
    "Http2Error",
    "Http2GoAway",
    "Http2Observer",
    "Http2RequestStarted",
    "Http2ResponseHeaders",
    "Http2StreamEnded",
    "ProtocolError",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_MAX_FRAME_SIZE = 0x5
REFUSED_STREAM = 0x7

DEFAULT_MAX_FRAME_SIZE = 1 << 14
LARGEST_MAX_FRAME_SIZE = (1 << 24) - 1
# Control frames and header blocks are buffered whole; DATA never is.
MAX_BUFFERED_FRAME = 1 << 20
MAX_HEADER_BLOCK = 1 << 20
MAX_HEADER_LIST = 1 << 18
# A connection with more streams in flight than this is not observed any further.
MAX_TRACKED_STREAMS = 10_000

_FRAME_HEADER = struct.Struct(">HBBBL")


@dataclass(frozen=True, slots=True)
class Http2RequestStarted:
    stream_id: int
    method: str
    authority: str
    path: str
    content_type: str
    grpc: bool
    pushed: bool = False


@dataclass(frozen=True, slots=True)
class Http2ResponseHeaders:
    """The final (non-1xx) response headers of a stream."""

    stream_id: int
    status: int
    grpc_status: int | None


@dataclass(frozen=True, slots=True)
class Http2StreamEnded:
    """The response finished (server END_STREAM), or the stream died before it did.

    ``reset`` says the stream ended by RST_STREAM, GOAWAY or connection close before the
    response was complete; ``refused`` marks streams the server never processed (REFUSED_STREAM
    or beyond a GOAWAY's last stream id), which well-behaved clients retry elsewhere.
    """

    stream_id: int
    status: int | None
    grpc_status: int | None
    reset: bool
    error_code: int | None
    request_bytes: int
    response_bytes: int
    refused: bool = False


@dataclass(frozen=True, slots=True)
class Http2GoAway:
    from_client: bool
    last_stream_id: int
    error_code: int


Http2Event = Http2RequestStarted | Http2ResponseHeaders | Http2StreamEnded | Http2GoAway


class Http2Error(ProtocolError):
    """A frame or header block that breaks RFC 9113 framing or HPACK."""


class _Stream:
    __slots__ = ("stream_id", "status", "grpc_status", "request_bytes", "response_bytes")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.status: int | None = None
        self.grpc_status: int | None = None
        self.request_bytes = 0
        self.response_bytes = 0


def _grpc_status(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


class _Direction:
    """Frames sent by one peer: framing, padding, header blocks, HPACK state."""

    def __init__(self, observer: Http2Observer, *, from_client: bool) -> None:
        self.observer = observer
        self.from_client = from_client
        self.name = "client" if from_client else "server"
        self.preface_left = len(PREFACE) if from_client else 0
        self.buf = bytearray()
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        # Set by the *other* peer's SETTINGS: the largest frame this peer may send.
        self.max_frame_size = DEFAULT_MAX_FRAME_SIZE
        self.block: bytearray | None = None
        self.block_stream = 0
        self.block_end_stream = False
        self.block_promised = 0
        self.data_left = 0  # payload bytes of the current DATA frame still to come
        self.data_stream = 0
        self.data_flags = 0

    def fail(self, why: str) -> Http2Error:
        return Http2Error(f"{self.name}: {why}")

    def feed(self, data: bytes) -> None:
        if self.data_left:
            n = min(self.data_left, len(data))
            self.data_left -= n
            data = data[n:]
            if not self.data_left:
                self.data_done()
        if self.preface_left:
            seen = len(PREFACE) - self.preface_left
            take = data[: self.preface_left]
            if PREFACE[seen : seen + len(take)] != take:
                raise self.fail("bad connection preface")
            self.preface_left -= len(take)
            data = data[len(take) :]
        if not data:
            return
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 9:
            hi, lo, ftype, flags, sid = _FRAME_HEADER.unpack_from(buf, pos)
            length = hi << 8 | lo
            sid &= 0x7FFFFFFF
            if length > self.max_frame_size:
                raise self.fail(f"frame of {length} bytes over the {self.max_frame_size} limit")
            if self.block is not None and ftype != CONTINUATION:
                raise self.fail(f"frame type {ftype} inside a header block")
            if ftype == DATA:
                pad = 0
                if flags & PADDED:
                    if length < 1:
                        raise self.fail("padded DATA frame without pad length")
                    if end - pos < 10:
                        break
                    pad = buf[pos + 9] + 1
                    if pad > length:
                        raise self.fail("DATA padding longer than the frame")
                self.data_header(sid, flags, length - pad)
                available = end - pos - 9
                if available >= length:
                    pos += 9 + length
                    self.data_done()
                else:
                    self.data_left = length - available
                    pos = end
                    break
                continue
            if end - pos - 9 < length:
                if length > MAX_BUFFERED_FRAME:
                    raise self.fail(f"type {ftype} frame of {length} bytes is too large")
                break
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self.frame(ftype, flags, sid, payload)
        del buf[:pos]

    # DATA
    def data_header(self, sid: int, flags: int, data_bytes: int) -> None:
        if sid == 0:
            raise self.fail("DATA on stream 0")
        self.data_stream = sid
        self.data_flags = flags
        stream = self.observer.streams.get(sid)
        if stream is not None:
            if self.from_client:
                stream.request_bytes += data_bytes
            else:
                stream.response_bytes += data_bytes

    def data_done(self) -> None:
        if self.data_flags & END_STREAM and not self.from_client:
            self.observer.response_ended(self.data_stream)

    # other frames
    def frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == HEADERS or ftype == PUSH_PROMISE:
            self.header_frame(ftype, flags, sid, payload)
        elif ftype == CONTINUATION:
            if self.block is None or sid != self.block_stream:
                raise self.fail("CONTINUATION without an open header block on its stream")
            self.block += payload
            if len(self.block) > MAX_HEADER_BLOCK:
                raise self.fail("header block too large")
            if flags & END_HEADERS:
                self.block_done()
        elif ftype == PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise self.fail("malformed PRIORITY")
        elif ftype == RST_STREAM:
            if sid == 0 or len(payload) != 4:
                raise self.fail("malformed RST_STREAM")
            self.observer.reset(sid, int.from_bytes(payload, "big"))
        elif ftype == SETTINGS:
            self.settings(flags, sid, payload)
        elif ftype == PING:
            if sid != 0 or len(payload) != 8:
                raise self.fail("malformed PING")
        elif ftype == GOAWAY:
            if sid != 0 or len(payload) < 8:
                raise self.fail("malformed GOAWAY")
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.observer.goaway(self.from_client, last, int.from_bytes(payload[4:8], "big"))
        elif ftype == WINDOW_UPDATE:
            if len(payload) != 4:
                raise self.fail("malformed WINDOW_UPDATE")
        # Unknown frame types are ignored, as RFC 9113 section 4.1 requires.

    def header_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise self.fail("header block on stream 0")
        if ftype == PUSH_PROMISE and self.from_client:
            raise self.fail("PUSH_PROMISE from the client")
        start, stop = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise self.fail("padded frame without pad length")
            start = 1
            stop -= payload[0]
        promised = 0
        if ftype == PUSH_PROMISE:
            promised = int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF
            start += 4
        elif flags & PRIORITY_FLAG:
            start += 5
        if stop < start:
            raise self.fail("padding or fields longer than the frame")
        self.block = bytearray(payload[start:stop])
        self.block_stream = sid
        self.block_end_stream = ftype == HEADERS and bool(flags & END_STREAM)
        self.block_promised = promised
        if flags & END_HEADERS:
            self.block_done()

    def block_done(self) -> None:
        block, self.block = self.block, None
        assert block is not None
        try:
            headers = self.decoder.decode(bytes(block), raw=True)
        except hpack.HPACKError as exc:
            raise self.fail(f"HPACK: {exc}") from exc
        fields: dict[bytes, bytes] = {}
        for name, value in headers:
            fields.setdefault(name, value)
        obs = self.observer
        if self.block_promised:
            obs.request_headers(self.block_promised, fields, pushed=True)
        elif self.from_client:
            obs.request_headers(self.block_stream, fields, pushed=False)
        else:
            obs.response_headers(self.block_stream, fields, end_stream=self.block_end_stream)

    def settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise self.fail("SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise self.fail("SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise self.fail("SETTINGS length not a multiple of 6")
        # These settings bind what the *other* peer may send. They take effect at the ACK,
        # but the observer only needs to be no stricter than the receiver, so it applies the
        # most permissive value it has seen.
        peer = self.observer.other(self)
        for off in range(0, len(payload), 6):
            ident = int.from_bytes(payload[off : off + 2], "big")
            value = int.from_bytes(payload[off + 2 : off + 6], "big")
            if ident == SETTINGS_HEADER_TABLE_SIZE:
                peer.decoder.max_allowed_table_size = max(
                    peer.decoder.max_allowed_table_size, value
                )
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= LARGEST_MAX_FRAME_SIZE:
                    raise self.fail(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                peer.max_frame_size = max(peer.max_frame_size, value)


class Http2Observer:
    """Watches one HTTP/2 connection (prior knowledge, starting with the client preface)."""

    def __init__(self) -> None:
        self.client = _Direction(self, from_client=True)
        self.server = _Direction(self, from_client=False)
        self.streams: dict[int, _Stream] = {}
        self.last_client_stream = 0
        self.out: list[Http2Event] = []
        self.failed: Http2Error | None = None
        self.closed = False

    def other(self, direction: _Direction) -> _Direction:
        return self.server if direction is self.client else self.client

    def feed_client(self, data: bytes) -> list[Http2Event]:
        return self._feed(self.client, data)

    def feed_server(self, data: bytes) -> list[Http2Event]:
        return self._feed(self.server, data)

    def _feed(self, direction: _Direction, data: bytes) -> list[Http2Event]:
        if self.failed is not None:
            raise Http2Error(f"observer already failed: {self.failed.reason}")
        if self.closed:
            raise Http2Error("observer is closed")
        self.out = []
        try:
            direction.feed(bytes(data))
        except Http2Error as exc:
            self.failed = exc
            raise Http2Error(exc.reason, events=self.out) from None
        return self.out

    def close(self) -> list[Http2Event]:
        """The connection ended: every stream still open failed."""
        if self.closed or self.failed is not None:
            self.closed = True
            return []
        self.closed = True
        self.out = []
        for sid in sorted(self.streams):
            self._end(sid, reset=True, error_code=None)
        return self.out

    # called by the directions
    def request_headers(self, sid: int, fields: dict[bytes, bytes], *, pushed: bool) -> None:
        if not pushed:
            if sid in self.streams or sid <= self.last_client_stream:
                return  # trailers, or headers for a stream whose response already ended
            if sid % 2 == 0:
                raise Http2Error(f"client opened even stream {sid}")
            self.last_client_stream = sid
        elif sid in self.streams:
            raise Http2Error(f"promised stream {sid} already exists")
        if len(self.streams) >= MAX_TRACKED_STREAMS:
            raise Http2Error(f"more than {MAX_TRACKED_STREAMS} streams in flight")
        self.streams[sid] = _Stream(sid)
        content_type = fields.get(b"content-type", b"").decode("latin-1")
        self.out.append(
            Http2RequestStarted(
                sid,
                fields.get(b":method", b"").decode("latin-1"),
                fields.get(b":authority", fields.get(b"host", b"")).decode("latin-1"),
                fields.get(b":path", b"").decode("latin-1"),
                content_type,
                content_type.startswith("application/grpc"),
                pushed,
            )
        )

    def response_headers(self, sid: int, fields: dict[bytes, bytes], *, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        if stream.status is None:
            raw = fields.get(b":status", b"")
            if len(raw) != 3 or not raw.isdigit():
                raise Http2Error(f"stream {sid}: response without a valid :status")
            status = int(raw)
            if status < 200:
                return  # interim (100 Continue, 103 Early Hints): the final one follows
            stream.status = status
            stream.grpc_status = _grpc_status(fields.get(b"grpc-status"))
            self.out.append(Http2ResponseHeaders(sid, status, stream.grpc_status))
        else:
            grpc_status = _grpc_status(fields.get(b"grpc-status"))
            if grpc_status is not None:
                stream.grpc_status = grpc_status
        if end_stream:
            self.response_ended(sid)

    def response_ended(self, sid: int) -> None:
        if sid in self.streams:
            self._end(sid, reset=False, error_code=None)

    def reset(self, sid: int, error_code: int) -> None:
        if sid in self.streams:
            self._end(sid, reset=True, error_code=error_code, refused=error_code == REFUSED_STREAM)

    def goaway(self, from_client: bool, last: int, error_code: int) -> None:
        self.out.append(Http2GoAway(from_client, last, error_code))
        # Streams the GOAWAY's sender never saw were not processed at all.
        parity = 0 if from_client else 1
        for sid in sorted(self.streams):
            if sid > last and sid % 2 == parity:
                self._end(sid, reset=True, error_code=None, refused=True)

    def _end(self, sid: int, *, reset: bool, error_code: int | None, refused: bool = False) -> None:
        s = self.streams.pop(sid)
        self.out.append(
            Http2StreamEnded(
                sid,
                s.status,
                s.grpc_status,
                reset,
                error_code,
                s.request_bytes,
                s.response_bytes,
                refused,
            )
        )
