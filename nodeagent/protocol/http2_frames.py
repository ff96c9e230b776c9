"""HTTP/2 frame reading for one direction: framing, padding, header blocks, HPACK state.

Every header block of a direction is decoded in order (also trailers, pushes and streams
nobody asked about) because HPACK's dynamic table is shared by the whole connection:
skipping one block would desynchronise every later one.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hpack import HPACKError

from nodeagent.protocol.errors import ProtocolError
from nodeagent.protocol.http2_hpack import Decoder

if TYPE_CHECKING:
    from nodeagent.protocol.http2 import Http2Observer

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
_FRAME_HEADER = struct.Struct(">HBBBL")


class Http2Error(ProtocolError):
    """A frame or header block that breaks RFC 9113 framing or HPACK."""


class FrameReader:
    """Frames sent by one peer: framing, padding, header blocks, HPACK state."""

    def __init__(self, observer: Http2Observer, *, from_client: bool) -> None:
        self.observer = observer
        self.from_client = from_client
        self.name = "client" if from_client else "server"
        self.preface_left = len(PREFACE) if from_client else 0
        self.buf = bytearray()
        self.decoder = Decoder()  # only the fields the observer reads (http2_hpack.WANTED)
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
            if promised == 0 or promised % 2:
                raise self.fail(f"PUSH_PROMISE for stream {promised}")
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
            fields = self.decoder.decode(bytes(block))
        except HPACKError as exc:
            raise self.fail(f"HPACK: {exc}") from exc
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
