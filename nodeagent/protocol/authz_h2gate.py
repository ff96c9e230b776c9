"""Per-stream authorization of an HTTP/2 connection (sans-io), for a client only L7 rules can
allow: each new stream's request headers are decided before the app sees them. An allowed
stream goes to the app; a denied one never does: the client gets a trailers-only
PERMISSION_DENIED (gRPC) or 403 on that stream, and the connection goes on.

HPACK state is per direction and per connection, so a header block cannot simply be left out:
every client header block is decoded here and the allowed ones re-encoded for the app with
literals that leave the app's dynamic table alone (what the client's encoder had indexed, the
app never needs). Our answers to the client are such literals too, put between the app's frames,
so the client's decoder stays in step with the app's encoder. DATA of a denied stream is dropped
and its connection-level flow-control credit given back to the client.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack

from nodeagent.protocol.authz_deny import (
    MAX_HEADER_BLOCK,
    DeniedRequest,
    denial_headers,
    frame,
    header_frames,
    static_only_block,
)
from nodeagent.protocol.http2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    WINDOW_UPDATE,
)

_FRAME = struct.Struct(">HBBBL")
MAX_BUFFERED_FRAME = 1 << 24
NO_ERROR = 0x0

Decide = Callable[[str, str], "tuple[bool, str]"]  # (method, path) -> (allowed, reason)


class H2GateError(Exception):
    """Not HTTP/2 that can be gated: the connection is closed."""


@dataclass(slots=True)
class H2Out:
    to_app: bytes = b""
    to_client: bytes = b""
    denied: list[DeniedRequest] = field(default_factory=list)


class Http2Gate:
    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.cbuf = bytearray()
        self.preface_left = len(PREFACE)
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self.block: bytearray | None = None
        self.block_sid = 0
        self.block_flags = 0
        self.opened: set[int] = set()  # streams passed to the app
        self.denied_sids: set[int] = set()
        self.last_sid = 0
        # app -> client framing: bytes of the current frame still to pass before a boundary
        self.s_header = bytearray()
        self.s_left = 0
        self.pending = bytearray()  # our frames for the client, waiting for a frame boundary

    # -- client -> app -------------------------------------------------------------------

    def client(self, data: bytes) -> H2Out:
        out = H2Out()
        app = bytearray()
        if self.preface_left:
            n = min(self.preface_left, len(data))
            offset = len(PREFACE) - self.preface_left
            if data[:n] != PREFACE[offset : offset + n]:
                raise H2GateError("not an HTTP/2 client preface")
            app += data[:n]
            self.preface_left -= n
            data = data[n:]
        self.cbuf += data
        while len(self.cbuf) >= 9:
            hi, lo, ftype, flags, sid = _FRAME.unpack_from(self.cbuf)
            length = (hi << 8) | lo
            sid &= 0x7FFFFFFF
            if length > MAX_BUFFERED_FRAME:
                raise H2GateError("frame too large")
            if len(self.cbuf) < 9 + length:
                break
            raw = bytes(self.cbuf[: 9 + length])
            del self.cbuf[: 9 + length]
            self._client_frame(raw, ftype, flags, sid, raw[9:], app, out)
        out.to_app = bytes(app)
        if self.s_left == 0 and not self.s_header:
            out.to_client, self.pending = bytes(self.pending), bytearray()
        return out

    def _client_frame(
        self, raw: bytes, ftype: int, flags: int, sid: int, payload: bytes, app: bytearray,
        out: H2Out,
    ) -> None:  # fmt: skip
        if self.block is not None:
            if ftype != CONTINUATION or sid != self.block_sid:
                raise H2GateError("header block interrupted")
            self.block += payload
            if len(self.block) > MAX_HEADER_BLOCK:
                raise H2GateError("header block too large")
            if flags & END_HEADERS:
                self._block_done(app, out)
            return
        if ftype == HEADERS:
            body = payload
            if flags & PADDED:
                if not body or body[0] >= len(body):
                    raise H2GateError("bad padding")
                body = body[1 : len(body) - body[0]]
            if flags & PRIORITY_FLAG:
                body = body[5:]
            self.block, self.block_sid, self.block_flags = bytearray(body), sid, flags
            if flags & END_HEADERS:
                self._block_done(app, out)
            return
        if ftype == CONTINUATION:
            raise H2GateError("CONTINUATION without HEADERS")
        if sid and sid in self.denied_sids:
            if ftype == DATA and payload:
                # The app never counts these bytes: the credit is ours to give back.
                self.pending += frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", len(payload)))
            return  # the app never heard of this stream
        app += raw

    def _block_done(self, app: bytearray, out: H2Out) -> None:
        assert self.block is not None
        block, sid, flags = bytes(self.block), self.block_sid, self.block_flags
        self.block = None
        try:
            headers = [(str(k), str(v)) for k, v in self.decoder.decode(block, raw=False)]
        except hpack.HPACKError as exc:
            raise H2GateError(f"HPACK: {exc}") from exc
        end_stream = bool(flags & END_STREAM)
        if sid in self.denied_sids:
            return  # trailers of a denied stream
        if sid not in self.opened:
            if sid % 2 == 0 or sid <= self.last_sid:
                raise H2GateError(f"stream {sid} cannot be opened by the client")
            self.last_sid = sid
            fields = dict(headers)
            method, path = fields.get(":method", ""), fields.get(":path", "")
            grpc = fields.get("content-type", "").startswith("application/grpc")
            allowed, reason = self.decide(method, path)
            if not allowed:
                self.denied_sids.add(sid)
                out.denied.append(DeniedRequest(method, path, grpc))
                answer = static_only_block(denial_headers(reason, grpc=grpc))
                self.pending += header_frames(sid, answer, end_stream=True)
                if not end_stream:
                    self.pending += frame(RST_STREAM, 0, sid, struct.pack(">L", NO_ERROR))
                return
            self.opened.add(sid)
        app += header_frames(sid, static_only_block(headers), end_stream=end_stream)

    # -- app -> client -------------------------------------------------------------------

    def server(self, data: bytes) -> bytes:
        """The app's bytes for the client, with our answers put in at frame boundaries."""
        out = bytearray()
        i = 0
        while i < len(data):
            if self.s_left:
                n = min(self.s_left, len(data) - i)
                out += data[i : i + n]
                i += n
                self.s_left -= n
                if self.s_left:
                    break
            else:
                need = 9 - len(self.s_header)
                chunk = data[i : i + need]
                self.s_header += chunk
                out += chunk
                i += len(chunk)
                if len(self.s_header) < 9:
                    break
                hi, lo = self.s_header[0], self.s_header[1]
                self.s_left = (hi << 16) | (lo << 8) | self.s_header[2]
                self.s_header.clear()
                if self.s_left:
                    continue
            # a frame just ended: ours may go now
            if self.pending and self.s_left == 0 and not self.s_header:
                out += self.pending
                self.pending = bytearray()
        if self.pending and self.s_left == 0 and not self.s_header:
            out += self.pending
            self.pending = bytearray()
        return bytes(out)
