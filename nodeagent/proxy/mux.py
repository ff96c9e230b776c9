"""One multiplexed agent-to-agent mTLS connection (HTTP/2 CONNECT streams, nodeagent.protocol.mux).

`MuxSession` is the application protocol on top of the TLS layer (nodeagent.proxy.tlslayer): it
runs the h2 state machine and hands each stream to an asyncio protocol (a relay's half) through
`MuxStream`, which looks like an asyncio transport to it. So a relay moves an app connection
through a stream exactly as through a TCP or TLS connection of its own:
- write() is DATA within the peer's flow-control window, the rest buffered (the writer is
  paused above `HIGH_WATER`); write_eof() is END_STREAM once the buffer is out;
- received DATA is acknowledged (window given back) only once the protocol took it: a paused
  reader holds its sender, never the other streams;
- END_STREAM from the peer is eof_received(); RST_STREAM (or the connection lost) is
  connection_lost() with an error, and abort() (or a linger-0 close, as the relay resets a
  client) sends RST_STREAM; close() half-closes and lets the stream go, resetting it only if
  the peer keeps sending (as a closed TCP socket answers with a reset).

The h2 library runs only the connection's own frames (the preface, SETTINGS, PING, GOAWAY).
Every frame of a stream is this module's: DATA and WINDOW_UPDATE with both directions'
flow-control windows (h2's per-frame work, a frame object, events, its own window books, was
most of the CPU a stream added to a bulk or a chatty app connection), and HEADERS, RST_STREAM
and END_STREAM with the streams' states (h2's state machine, header validation and HPACK
encoder were a fifth of an agent's CPU for a new app connection). A CONNECT is encoded as
literals that touch no HPACK table, the answers are single static-table bytes; what the peer
sends is decoded with hpack's decoder, whatever its encoder did. Frames go out once per turn of
the event loop, the frames of every stream that wrote in that turn together (one TLS record for
many small writes).
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import hyperframe.frame

from nodeagent.protocol import mux as wire

log = logging.getLogger(__name__)


def _short_data_repr(data: bytes | None) -> str:
    """hyperframe's `_raw_data_repr`, same text, without hexlifying the whole payload first: h2
    builds repr(frame) for its (no-op) trace log on every frame it receives, and for a 64 KiB
    DATA frame that was a 128 KiB string (about 1/10 of a bulk stream's CPU on loopback)."""
    if not data:
        return "None"
    r = binascii.hexlify(bytes(data[:11])).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


hyperframe.frame._raw_data_repr = _short_data_repr

HIGH_WATER = 256 * 1024
# A draining agent closes an idle shared connection once the peer has acknowledged the drain
# notice, or after this long without the acknowledgement.
DRAIN_ACK_WAIT = 2.0
LOW_WATER = 64 * 1024

# A frame's header: a 24-bit length (as 16 + 8 bits), type, flags, stream id (RFC 9113 4.1).
_HEADER = struct.Struct(">HBBBL")
_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _WINDOW_UPDATE = 0x0, 0x1, 0x2, 0x3, 0x8
_GOAWAY = 0x7
# Frames of a stream other than DATA and WINDOW_UPDATE (PUSH_PROMISE and CONTINUATION among
# them: neither ever comes from a peer agent, and both end the connection).
_STREAM_FRAMES = frozenset((_HEADERS, _PRIORITY, _RST_STREAM, 0x5, 0x9))
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
_REFUSED_STREAM = 0x7
_PREFACE_SIZE = 24  # the client's connection preface, "PRI * HTTP/2.0..."
_MAX_WINDOW = 2**31 - 1


def _header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def _window_update(stream_id: int, increment: int) -> bytes:
    return _header(4, _WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


def _headers(stream_id: int, block: bytes, *, end_stream: bool = False) -> bytes:
    flags = _END_HEADERS | (_END_STREAM if end_stream else 0)
    return _header(len(block), _HEADERS, flags, stream_id) + block


def _rst(stream_id: int, code: int) -> bytes:
    return _header(4, _RST_STREAM, 0, stream_id) + int(code).to_bytes(4, "big")


def _goaway(last_stream_id: int, code: int) -> bytes:
    return (
        _header(8, _GOAWAY, 0, 0) + last_stream_id.to_bytes(4, "big") + int(code).to_bytes(4, "big")
    )


def _code_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


def _reset_ahead(data: bytes, pos: int, end: int, sid: int) -> bool:
    """Whether the whole frames of data[pos:end] include a RST_STREAM of stream `sid` (a client
    whose app connection went away at once resets the stream in the same read as its CONNECT:
    nothing is to be answered or started for it)."""
    unpack = _HEADER.unpack_from
    while end - pos >= 9:
        hi, lo, kind, _, frame_sid = unpack(data, pos)
        if kind == _RST_STREAM and frame_sid & 0x7FFFFFFF == sid:
            return True
        pos += 9 + ((hi << 8) | lo)
    return False


# h2's answer to a send on a stream that is already over: closed, or closed and forgotten.
class _Broken(Exception):
    """The connection was ended while frames were being read (a protocol error)."""


# A shared connection outlives its app connections: a peer node that vanished (no FIN, no RST)
# must not leave it open for good. TCP keepalive ends it after about KEEPALIVE_IDLE +
# KEEPALIVE_COUNT * KEEPALIVE_INTERVAL seconds of silence.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3


def keep_alive(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except (OSError, AttributeError):
        pass  # not a TCP socket (tests over other transports): no keepalive


class StreamRefused(ConnectionRefusedError):
    """The peer did not take the stream (GOAWAY, REFUSED_STREAM, a non-200 answer): nothing of
    it reached the app, it may be opened again on another connection."""


class StreamReset(ConnectionResetError):
    """The peer reset the stream (its app connection was reset), or the connection was lost."""


class _StreamSocket:
    """What `get_extra_info("socket")` gives for a stream: the carrier's addresses, and a
    linger-0 option that turns the stream's close into a reset (the carrier is never touched)."""

    def __init__(self, stream: MuxStream) -> None:
        self._stream = stream

    def getpeername(self) -> Any:
        return self._stream.session.peername

    def getsockname(self) -> Any:
        return self._stream.session.sockname

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if level == socket.SOL_SOCKET and option == socket.SO_LINGER and isinstance(value, bytes):
            on, linger = struct.unpack("ii", value)
            self._stream.reset_on_close = bool(on) and linger == 0

    def getsockopt(self, *args: Any) -> Any:
        raise OSError("not a socket: a stream of a multiplexed tunnel connection")


class MuxStream:
    """One app connection's stream, as the asyncio transport its protocol writes to."""

    def __init__(self, session: MuxSession, stream_id: int, protocol: asyncio.Protocol) -> None:
        self.session, self.id, self.protocol = session, stream_id, protocol
        self.out = bytearray()
        self.eof_pending = False  # write_eof() asked; END_STREAM goes once `out` is empty
        self.eof_sent = False
        self.remote_ended = False
        self.closing = False  # close()/abort() called: the protocol is gone
        self.lost = False  # connection_lost() delivered
        self.reset_on_close = False
        self.paused = False
        self.inbox: list[tuple[bytes, int]] = []  # (data, flow-controlled length) while paused
        self.eof_queued = False
        self.write_paused = False
        self.answered = False  # the peer's response headers came (client side)
        self.lost_with: Exception | None = None
        self.extra: dict[str, Any] = {}
        # Flow control (RFC 9113 5.2), kept by the session: what we may still send, what the
        # peer may still send, and what the protocol took but the peer was not yet given back.
        self.send_window = session.h2.remote_settings.initial_window_size
        self.recv_window = wire.STREAM_WINDOW
        self.unacked = 0

    # --- the transport interface ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_pending or self.closing or self.lost or not data:
            return
        if not self.out:
            data = self.session.send_now(self, data)  # what the window takes, without a copy
            if not data:
                return
        self.out += data
        self.session.flush(self)

    def write_eof(self) -> None:
        if self.eof_pending or self.lost:
            return
        self.eof_pending = True
        self.session.flush(self)

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.inbox or self.eof_queued:
            asyncio.get_running_loop().call_soon(self._deliver)

    def is_reading(self) -> bool:
        return not self.paused

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def close(self) -> None:
        if self.closing or self.lost:
            return
        if self.reset_on_close:
            self.abort()
            return
        self.closing = True
        self.write_eof()
        self.session.release_inbox(self)
        self.session.done_if_ended(self)
        self._lose_soon(None)

    def abort(self) -> None:
        if self.lost and self.closing:
            return
        self.closing = True
        self.out.clear()
        self.session.reset(self, h2.errors.ErrorCodes.CANCEL)
        self._lose_soon(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return _StreamSocket(self)
        if name == "ssl_object":
            return self.session.ssl_object
        if name == "peername":
            return self.session.peername
        if name == "sockname":
            return self.session.sockname
        return self.extra.get(name, default)

    def get_write_buffer_size(self) -> int:
        return len(self.out)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    # --- from the session -----------------------------------------------------------------

    def received(self, data: bytes, flow: int) -> None:
        if self.closing:
            # Nobody reads any more: a closed socket would answer with a reset.
            self.session.ack(self.id, flow)
            self.session.reset(self, h2.errors.ErrorCodes.CANCEL)
            return
        if self.paused or self.inbox:
            self.inbox.append((data, flow))
            return
        self.session.ack(self.id, flow)
        self.protocol.data_received(data)

    def ended(self) -> None:
        self.remote_ended = True
        if self.closing:
            return
        if self.paused or self.inbox:
            self.eof_queued = True
            return
        self.protocol.eof_received()

    def _deliver(self) -> None:
        while self.inbox and not self.paused and not self.closing:
            data, flow = self.inbox.pop(0)
            self.session.ack(self.id, flow)
            self.protocol.data_received(data)
        if self.eof_queued and not self.inbox and not self.paused and not self.closing:
            self.eof_queued = False
            self.protocol.eof_received()
        self.session.send_out()

    def drained(self) -> None:
        if self.write_paused and len(self.out) <= LOW_WATER:
            self.write_paused = False
            if not self.closing:
                self.protocol.resume_writing()

    def filled(self) -> None:
        if not self.write_paused and len(self.out) > HIGH_WATER and not self.closing:
            self.write_paused = True
            self.protocol.pause_writing()

    def gone(self, exc: Exception | None) -> None:
        """Deliver connection_lost once (closed or aborted by the protocol, a reset, the
        connection lost). The session keeps a closed stream until its END_STREAM is out."""
        if self.lost:
            return
        self.lost = True
        self.lost_with = exc
        protocol, self.protocol = self.protocol, _GONE
        protocol.connection_lost(exc)

    def _lose_soon(self, exc: Exception | None) -> None:
        asyncio.get_running_loop().call_soon(self.gone, exc)


class _Gone(asyncio.Protocol):
    pass


_GONE = _Gone()


class MuxSession(asyncio.Protocol):
    """The h2 connection over one tunnel TLS connection; `transport` is the TLS layer's app side.

    Client side: `open_stream()` per app connection. Server side: `on_stream(stream, target)`
    for every CONNECT the peer opens (it attaches a protocol with `stream.protocol = ...`
    and then calls `protocol.connection_made(stream)`)."""

    def __init__(
        self,
        *,
        client_side: bool,
        on_stream: Callable[[MuxStream, tuple[str, int]], None] | None = None,
        on_done: Callable[[MuxStream], None] | None = None,
        on_lost: Callable[[MuxSession], None] | None = None,
    ) -> None:
        self.client_side = client_side
        self.on_stream, self.on_done, self.on_lost = on_stream, on_done, on_lost
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=True
        )
        self.h2 = h2.connection.H2Connection(config)
        self.decoder = hpack.Decoder()  # the peer's header blocks (HEADERS are ours, not h2's)
        self._next_sid = 1  # client side: the next stream's id
        self._last_inbound = 0  # server side: the highest stream id the peer opened
        self.transport: Any = None
        self.streams: dict[int, MuxStream] = {}
        self.blocked: dict[int, MuxStream] = {}  # streams with bytes waiting for window
        self.closed = False
        self.going_away = False  # GOAWAY received (client) or sent (server)
        # Server side: the peer acknowledged the drain notice, so every stream it opened before
        # seeing it has arrived (and was refused): closing now cuts nothing in flight.
        self.drain_acked = False
        self.error: Exception | None = None
        self.peername: Any = None
        self.sockname: Any = None
        self.ssl_object: Any = None
        self._inbound: list[bytes] = []  # received, parsed on the next turn of the loop
        self._inbound_size = 0  # bytes in _inbound
        self._need = 0  # bytes the next frame needs (parsing waits for them)
        self._rest = b""  # the start of a frame not yet complete
        # A DATA frame whose payload is handed over as its records come (a big frame spans
        # several TLS records): bytes still to come, its stream (None: dropped), flags, id.
        self._body = 0
        self._body_stream: MuxStream | None = None
        self._body_flags = 0
        self._body_sid = 0
        self._preface = not client_side  # the client's preface comes first (server side)
        self._out: list[
            bytes | memoryview
        ] = []  # frames to send, in order, once per turn of the loop
        self._writing = False  # a _write_out() is scheduled
        # Connection-level flow control (see MuxStream): start() raises what the peer may send.
        self.send_window = 65535
        self.recv_window = wire.CONNECTION_WINDOW
        self.unacked = 0
        self.opened = 0  # streams ever opened (metrics, tests)
        self.last_read = 0.0
        # The loop, looked up once (start()): on CPython 3.11 every asyncio.get_running_loop()
        # is a getpid() system call, and a chatty connection asked for it twice per exchange.
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- set-up ---------------------------------------------------------------------------

    def start(self, transport: Any, early: bytes = b"") -> None:
        """Take over `transport` (TLS app side, handshake done) and send our preface."""
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        keep_alive(transport.get_extra_info("socket"))
        self.ssl_object = transport.get_extra_info("ssl_object")
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self.h2.initiate_connection()
        # Applied by h2 when the peer acknowledges them (until then both use the defaults).
        self.h2.update_settings(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: wire.MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: wire.STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: wire.MAX_FRAME,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            }
        )
        self.h2.increment_flow_control_window(wire.CONNECTION_WINDOW - 65535)
        self.send_out()
        if early:
            self.data_received(early)
        transport.resume_reading()

    @property
    def peer_max_streams(self) -> int:
        return int(self.h2.remote_settings.max_concurrent_streams)

    @property
    def usable(self) -> bool:
        return not self.closed and not self.going_away

    # --- client side ----------------------------------------------------------------------

    def open_stream(self, protocol: asyncio.Protocol, target: tuple[str, int]) -> MuxStream:
        """A new stream to `target` (CONNECT sent); `protocol` gets connection_made at once."""
        if not self.usable:
            raise StreamRefused("the tunnel connection is going away")
        sid = self._next_sid
        if sid > _MAX_WINDOW:  # stream ids are 31 bits: this connection has opened its last
            self.going_away = True
            raise StreamRefused("tunnel stream not opened: the connection has no stream id left")
        if len(self.streams) >= self.peer_max_streams:
            raise StreamRefused(f"tunnel stream not opened: {len(self.streams)} streams open, "
                                "the peer's limit")  # fmt: skip
        self._next_sid = sid + 2
        stream = MuxStream(self, sid, protocol)
        self._append(_headers(sid, wire.encode_connect(*target)))
        self.streams[sid] = stream
        self.opened += 1
        protocol.connection_made(stream)  # type: ignore[arg-type]
        self.send_out()
        return stream

    # --- events from the TLS layer --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        # The TLS layer hands over one record (16 KiB at most) at a time: frames are parsed as
        # soon as they are whole, a frame split over records once its last part came.
        self._inbound.append(data)
        self._inbound_size += len(data)
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        self.last_read = loop.time()
        if self._inbound_size >= self._need:
            self._receive()

    def _receive(self) -> None:
        chunks, self._inbound = self._inbound, []
        self._inbound_size = 0
        if self.closed or not chunks:
            return
        if self._rest:
            chunks.insert(0, self._rest)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            used = self._frames(data)
        except _Broken:
            self._rest = b""
            return
        self._rest = data[used:] if used else data
        self._inbound_size = len(data) - used
        self.send_out()

    def _frames(self, data: bytes) -> int:
        """Act on the frames at the start of `data`; how many bytes they took. DATA and
        WINDOW_UPDATE are ours, and so is every frame of a stream (HEADERS, RST_STREAM); the
        connection's own frames go to h2 (runs of them at once), in order.
        A DATA frame's payload goes to its stream as it comes, without waiting for the rest."""
        pos, end = 0, len(data)
        control = -1  # where the run of frames for h2 began
        if self._preface:
            if end < _PREFACE_SIZE:
                self._need = _PREFACE_SIZE
                return 0
            self._preface = False
            control, pos = 0, _PREFACE_SIZE
        need = 0
        unpack = _HEADER.unpack_from
        while True:
            if self._body:
                take = min(self._body, end - pos)
                if not take:
                    need = 1
                    break
                piece = data if take == end else data[pos : pos + take]
                pos += take
                self._body -= take
                self._body_piece(piece)
                continue
            if end - pos < 9:
                need = 9
                break
            hi, lo, kind, flags, sid = unpack(data, pos)
            length = (hi << 8) | lo
            if length > wire.MAX_FRAME:
                self._fail(h2.errors.ErrorCodes.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            sid &= 0x7FFFFFFF
            whole = end - pos >= 9 + length
            if kind == _DATA and sid and (whole or not flags & _PADDED):
                if control >= 0:
                    self._to_h2(data[control:pos])
                    control = -1
                if whole:
                    self._data_frame(data, pos + 9, length, flags, sid)
                    pos += 9 + length
                else:
                    self._begin_body(length, flags, sid)
                    pos += 9
                continue
            if not whole:
                need = 9 + length
                break
            if kind == _WINDOW_UPDATE and length == 4:
                if control >= 0:
                    self._to_h2(data[control:pos])
                    control = -1
                increment = int.from_bytes(data[pos + 9 : pos + 13], "big") & 0x7FFFFFFF
                self._window_updated(sid, increment)
            elif kind in _STREAM_FRAMES and sid:
                if control >= 0:
                    self._to_h2(data[control:pos])
                    control = -1
                try:
                    self._stream_frame(data, pos, end, kind, flags, sid, length)
                except _Broken:
                    raise
                except Exception:
                    log.exception("tunnel connection: acting on a stream's frame failed; ending it")
                    self._fail(h2.errors.ErrorCodes.INTERNAL_ERROR, "an internal error")
            elif control < 0:
                control = pos
            pos += 9 + length
        if control >= 0:
            self._to_h2(data[control:pos])
        self._need = need
        return pos

    def _to_h2(self, frames: bytes) -> None:
        try:
            events = self.h2.receive_data(frames)
        except h2.exceptions.ProtocolError as exc:
            log.debug("tunnel connection: HTTP/2 protocol error: %s", exc)
            self.error = exc
            # h2's own GOAWAY would name stream 0 as the last one processed (it never sees a
            # stream): ours names the last the peer opened, so it retries only the later ones.
            self.h2.data_to_send()
            code = getattr(exc, "error_code", None) or h2.errors.ErrorCodes.PROTOCOL_ERROR
            self._out.append(_goaway(self._last_inbound, code))
            self._write_out()
            self._abort(StreamReset(f"tunnel connection: {exc}"))
            raise _Broken from exc
        try:
            for event in events:
                self._event(event)
        except _Broken:
            raise
        except Exception:
            # Never left half-read (the first bytes come before reading resumes): the peer gets
            # a GOAWAY and opens a new connection for what comes next.
            log.exception("tunnel connection: acting on the peer's frames failed; ending it")
            self._fail(h2.errors.ErrorCodes.INTERNAL_ERROR, "an internal error")

    def _fail(self, code: h2.errors.ErrorCodes, why: str) -> None:
        """A connection error found here (not by h2): GOAWAY, and the connection is over."""
        exc = h2.exceptions.ProtocolError(f"tunnel connection: {why}")
        log.debug("%s", exc)
        self.error = exc
        self._append(_goaway(self._last_inbound, code))
        self._write_out()
        self._abort(StreamReset(str(exc)))
        raise _Broken

    def _begin_body(self, length: int, flags: int, sid: int) -> None:
        """A DATA frame (not padded) whose payload is still coming: count it now, then hand
        each part to the stream as it comes (_body_piece)."""
        self.recv_window -= length
        if self.recv_window < 0:
            self._fail(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, "the peer overran the window")
        self._body, self._body_flags, self._body_sid = length, flags, sid
        stream = self.streams.get(sid)
        self._body_stream = None
        if stream is None or stream.remote_ended:
            self.ack(sid, length)  # a stream that is over: see _data_frame
            return
        if self._overran(stream, length):
            return
        self._body_stream = stream

    def _body_piece(self, piece: bytes) -> None:
        stream = self._body_stream
        if stream is not None:
            if self.streams.get(stream.id) is stream:
                stream.received(piece, len(piece))
            else:  # reset meanwhile: what is left counts for the connection only
                self.ack(stream.id, len(piece))
        if not self._body and stream is not None and self._body_flags & _END_STREAM:
            self._remote_end(stream)

    def _data_frame(self, data: bytes, start: int, length: int, flags: int, sid: int) -> None:
        end = start + length
        if flags & _PADDED:
            pad = data[start] if length else 256
            start += 1
            end -= pad
            if end < start:
                self._fail(h2.errors.ErrorCodes.PROTOCOL_ERROR, "DATA padding beyond the frame")
        self.recv_window -= length
        if self.recv_window < 0:
            self._fail(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, "the peer overran the window")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_ended:
            # A stream that is over (reset, or ended by the peer): its bytes only count for
            # the connection.
            self.ack(sid, length)
            return
        if length:
            if self._overran(stream, length):
                return
            stream.received(data[start:end], length)
        if flags & _END_STREAM:
            self._remote_end(stream)

    def _overran(self, stream: MuxStream, length: int) -> bool:
        """Count `length` received bytes against the stream's window; a peer that overran it
        gets the stream reset (the bytes still count for the connection, acknowledged here)."""
        stream.recv_window -= length
        if stream.recv_window >= 0:
            return False
        self.ack(stream.id, length)
        stream.closing = True
        self.reset(stream, h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
        stream.gone(StreamReset("tunnel stream: the peer overran its window"))
        return True

    def _window_updated(self, sid: int, increment: int) -> None:
        if sid == 0:
            self.send_window += increment
            if increment == 0 or self.send_window > _MAX_WINDOW:
                self._fail(h2.errors.ErrorCodes.FLOW_CONTROL_ERROR, "a bad connection window")
            for blocked in list(self.blocked.values()):
                self.flush(blocked, send=False)
            return
        stream = self.streams.get(sid)
        if stream is None:
            return  # a stream that is over
        stream.send_window += increment
        if increment == 0 or stream.send_window > _MAX_WINDOW:
            stream.closing = True
            self.reset(stream, h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
            stream.gone(StreamReset("tunnel stream: a bad window update"))
        elif sid in self.blocked:
            self.flush(stream, send=False)

    def _stream_frame(
        self, data: bytes, pos: int, end: int, kind: int, flags: int, sid: int, length: int
    ) -> None:
        """A HEADERS, RST_STREAM or PRIORITY frame (whole, at `pos`); anything else of a stream
        here (PUSH_PROMISE, CONTINUATION) ends the connection."""
        start, stop = pos + 9, pos + 9 + length
        if kind == _RST_STREAM:
            if length != 4:
                self._fail(h2.errors.ErrorCodes.FRAME_SIZE_ERROR, f"a RST_STREAM of {length} bytes")
            self._peer_reset(sid, int.from_bytes(data[start:stop], "big"))
            return
        if kind == _PRIORITY:
            return  # advice, which a tunnel does not take
        if kind != _HEADERS:
            self._fail(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"a frame of type {kind} on a stream")
        if not flags & _END_HEADERS:
            # A peer agent's header block is a few dozen bytes: never split.
            self._fail(h2.errors.ErrorCodes.PROTOCOL_ERROR,
                       "a header block continued in CONTINUATION frames")  # fmt: skip
        if flags & _PADDED:
            start += 1
            stop -= data[pos + 9] if length else 256
        if flags & _PRIORITY_FLAG:
            start += 5
        if stop < start:
            self._fail(h2.errors.ErrorCodes.PROTOCOL_ERROR, "HEADERS padding beyond the frame")
        try:
            headers: Any = self.decoder.decode(data[start:stop], raw=True)
        except hpack.HPACKError as exc:
            self._fail(h2.errors.ErrorCodes.COMPRESSION_ERROR, f"a header block: {exc}")
        end_stream = bool(flags & _END_STREAM)
        if self.client_side:
            self._response(sid, headers, end_stream)
        else:
            self._request(sid, headers, end_stream, ahead=(data, pos + 9 + length, end))

    def _request(
        self,
        sid: int,
        headers: list[tuple[bytes, bytes]],
        end_stream: bool,
        ahead: tuple[bytes, int, int],
    ) -> None:
        """The peer's HEADERS on the server side: a new stream's CONNECT, answered here."""
        if sid <= self._last_inbound or not sid % 2:
            stream = self.streams.get(sid)
            if sid % 2 and stream is not None:
                if end_stream:  # trailers, which no agent sends: only their END_STREAM counts
                    self._remote_end(stream)
                return
            if sid % 2:
                return  # a stream already over (reset here): nothing to answer
            self._fail(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"HEADERS opening stream {sid}")
        self._last_inbound = sid
        if _reset_ahead(*ahead, sid):
            return  # reset in the same read: nothing to answer, start or serve
        if self.going_away or self.on_stream is None or len(self.streams) >= wire.MAX_STREAMS:
            self._append(_rst(sid, _REFUSED_STREAM))
            return
        try:
            target = wire.parse_connect(headers)
        except wire.MuxHeaderError as exc:
            log.debug("%s", exc)
            self._append(_headers(sid, wire.STATUS_400, end_stream=True))
            return
        self._append(_headers(sid, wire.STATUS_200))
        stream = MuxStream(self, sid, _GONE)
        self.streams[sid] = stream
        self.opened += 1
        try:
            self.on_stream(stream, target)
        except Exception:
            # A bug in starting one stream costs that stream, not its neighbours.
            log.exception("tunnel stream %d to %s:%d: starting it failed; reset", sid, *target)
            stream.closing = True
            self.reset(stream, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if end_stream:
            self._remote_end(stream)

    def _response(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        """The peer's HEADERS on the client side: the answer to a stream's CONNECT."""
        stream = self.streams.get(sid)
        if stream is None:
            if not sid % 2:
                self._fail(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"HEADERS opening stream {sid}")
            return  # a stream reset here meanwhile
        if not stream.answered:
            status = dict(headers).get(b":status", b"")
            if status != b"200":
                stream.closing = True
                self.reset(stream, h2.errors.ErrorCodes.CANCEL)
                stream.gone(StreamRefused(f"tunnel stream answered {status.decode()}"))
                return
            stream.answered = True
        if end_stream:
            self._remote_end(stream)

    def _peer_reset(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return  # over already (or never started: reset in the read of its CONNECT)
        stream.out.clear()
        self.release_inbox(stream)
        self.forget(stream)
        kind = StreamRefused if code == _REFUSED_STREAM else StreamReset
        stream.gone(kind(f"tunnel stream reset by the peer ({_code_name(code)})"))

    def _remote_end(self, stream: MuxStream) -> None:
        """The peer's END_STREAM (on DATA or HEADERS): the app's half-close."""
        if self.streams.get(stream.id) is not stream or stream.remote_ended:
            return
        stream.ended()
        self.done_if_ended(stream)

    def _event(self, event: h2.events.Event) -> None:
        """What h2 makes of the connection's own frames (no stream's frame reaches it)."""
        if isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
            if changed is not None:
                delta = changed.new_value - (changed.original_value or 65535)
                for stream in self.streams.values():
                    stream.send_window += delta
            for stream in list(self.blocked.values()):
                self.flush(stream, send=False)
        elif isinstance(event, h2.events.PingReceived):
            if event.ping_data == wire.DRAIN_PING:
                self.going_away = True  # take no new stream here; this one ends when idle
                if not self.streams:
                    self.close()
        elif isinstance(event, h2.events.PingAckReceived):
            if event.ping_data == wire.DRAIN_PING and not self.client_side:
                self._drain_seen()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # A GOAWAY (h2 then sends and takes nothing more on this connection): what the
            # peer never saw may go elsewhere, the rest is cut.
            self.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, stream in list(self.streams.items()):
                if sid > last:
                    self.forget(stream)
                    stream.gone(StreamRefused("the peer agent is going away (GOAWAY)"))
            self._abort(StreamReset(f"tunnel connection ended: {event.error_code!r}"))

    def eof_received(self) -> bool:
        # The peer closed its side (close_notify): the connection is over for every stream.
        self.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inbound:
            self._receive()  # what arrived before the end still reaches its streams
        self.closed = True
        err = StreamReset(f"tunnel connection lost: {exc or self.error or 'closed'}")
        for stream in list(self.streams.values()):
            stream.gone(err)
            if self.on_done is not None:
                self.on_done(stream)
        self.streams.clear()
        self.blocked.clear()
        self._out.clear()
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(self)

    def pause_writing(self) -> None:
        for stream in list(self.streams.values()):
            if not stream.closing:
                stream.protocol.pause_writing()

    def resume_writing(self) -> None:
        for stream in list(self.streams.values()):
            if not stream.closing and not stream.write_paused:
                stream.protocol.resume_writing()

    # --- used by streams ------------------------------------------------------------------

    def flush(self, stream: MuxStream, *, send: bool = True) -> None:
        """Send what the windows allow of `stream`'s buffer, then END_STREAM if asked."""
        if self.closed or self.streams.get(stream.id) is not stream:
            return
        out = stream.out
        while out:
            room = min(stream.send_window, self.send_window, self.h2.max_outbound_frame_size)
            if room <= 0:
                break
            chunk = bytes(memoryview(out)[:room])
            del out[:room]
            self._data(stream, chunk)
        if out:
            self.blocked[stream.id] = stream
            stream.filled()
        else:
            self.blocked.pop(stream.id, None)
            if stream.eof_pending and not stream.eof_sent:
                stream.eof_sent = True
                self._append(_header(0, _DATA, _END_STREAM, stream.id))
                self.done_if_ended(stream)
        stream.drained()
        if send:
            self.send_out()

    def send_now(
        self, stream: MuxStream, data: bytes | bytearray | memoryview
    ) -> bytes | bytearray | memoryview:
        """Send as much of `data` as the windows allow at once; what is left over."""
        if self.closed or self.streams.get(stream.id) is not stream:
            return b""
        size = len(data)
        room = min(stream.send_window, self.send_window, self.h2.max_outbound_frame_size)
        if room >= size:  # the usual case: one frame
            self._data(stream, data if type(data) is bytes else bytes(data))
            self.send_out()
            return b""
        sent = 0
        # Frames are slices of the caller's bytes (immutable: no copy); of anything else, a copy.
        view = memoryview(data if type(data) is bytes else bytes(data))
        while sent < size and room > 0:
            chunk = view[sent : sent + room]
            self._data(stream, chunk)
            sent += len(chunk)
            room = min(stream.send_window, self.send_window, self.h2.max_outbound_frame_size)
        self.send_out()
        return data[sent:] if sent < size else b""

    def _data(self, stream: MuxStream, chunk: bytes | memoryview) -> None:
        """Queue one DATA frame (after whatever h2 has queued: the order is the wire's)."""
        before = self.h2.data_to_send()
        if before:
            self._out.append(before)
        size = len(chunk)
        stream.send_window -= size
        self.send_window -= size
        self._out.append(_header(size, _DATA, 0, stream.id))
        self._out.append(chunk)

    def ack(self, stream_id: int, flow: int) -> None:
        """`flow` bytes of the stream were taken: give them back to the peer, in increments
        of half a window (few WINDOW_UPDATE frames, never one per DATA frame)."""
        if not flow or self.closed:
            return
        self.unacked += flow
        if self.unacked >= wire.CONNECTION_WINDOW // 2:
            self._queue(_window_update(0, self.unacked))
            self.recv_window += self.unacked
            self.unacked = 0
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_ended:
            stream.unacked += flow
            if stream.unacked >= wire.STREAM_WINDOW // 2:
                self._queue(_window_update(stream_id, stream.unacked))
                stream.recv_window += stream.unacked
                stream.unacked = 0

    def _append(self, frame: bytes) -> None:
        """Queue a frame of ours after whatever h2 has queued (the order is the wire's)."""
        before = self.h2.data_to_send()
        if before:
            self._out.append(before)
        self._out.append(frame)

    def _queue(self, frame: bytes) -> None:
        self._append(frame)
        self.send_out()

    def release_inbox(self, stream: MuxStream) -> None:
        """A closed stream's unread bytes: give their window back."""
        for _, flow in stream.inbox:
            self.ack(stream.id, flow)
        stream.inbox.clear()

    def reset(self, stream: MuxStream, code: h2.errors.ErrorCodes) -> None:
        self.blocked.pop(stream.id, None)
        self.release_inbox(stream)
        if not self.closed and not (stream.eof_sent and stream.remote_ended):
            self._queue(_rst(stream.id, code))
        self.forget(stream)

    def forget(self, stream: MuxStream) -> None:
        """The stream is over on the wire (reset, or END_STREAM both ways and closed)."""
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
            self.blocked.pop(stream.id, None)
            if self.on_done is not None:
                self.on_done(stream)
            if not self.streams and self.going_away and (self.client_side or self.drain_acked):
                self.close()

    def done_if_ended(self, stream: MuxStream) -> None:
        if stream.eof_sent and stream.remote_ended and stream.closing:
            self.forget(stream)

    def send_out(self) -> None:
        """What is queued (ours and h2's) goes out at the end of this turn of the loop."""
        data = self.h2.data_to_send()
        if data:
            self._out.append(data)
        if self._out and not self._writing and self.transport is not None and not self.closed:
            self._writing = True
            loop = self.loop
            if loop is None:
                loop = self.loop = asyncio.get_running_loop()
            loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._writing = False
        data = self.h2.data_to_send()
        if data:
            self._out.append(data)
        if not self._out:
            return
        out, self._out = self._out, []
        if self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    # --- ending ---------------------------------------------------------------------------

    def go_away(self) -> None:
        """Take no new stream (the agent drains) and close once the last one has ended. The
        peer is told with a PING carrying DRAIN_PING, not a GOAWAY: h2 sends and takes nothing
        more on a connection once a GOAWAY has crossed it, and the streams still running must
        finish. A stream the peer opens meanwhile is refused (REFUSED_STREAM: it tries a new
        connection). Even an idle connection stays open until the peer has acknowledged the
        notice (it then closes its end): a CONNECT already on its way would otherwise meet a
        closed socket, and the app connection it carries would be reset."""
        if self.closed or self.going_away:
            return
        self.going_away = True
        try:
            self.h2.ping(wire.DRAIN_PING)
        except h2.exceptions.ProtocolError:
            self.close()
            return
        self.send_out()
        asyncio.get_running_loop().call_later(DRAIN_ACK_WAIT, self._drain_seen)

    def _drain_seen(self) -> None:
        """The peer acknowledged the drain notice (or never will): close once idle."""
        self.drain_acked = True
        if not self.streams and not self.closed:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            # What is queued (the last stream's END_STREAM, often) goes out first.
            self._write_out()
            self.transport.close()

    def _abort(self, exc: Exception) -> None:
        for stream in list(self.streams.values()):
            self.forget(stream)
            stream.gone(exc)
        if self.transport is not None:
            self.transport.abort()
