"""The relay: an accepted connection joined to an upstream one, both ways, with half-close.

Bytes move as the event loop hands them over (asyncio Protocols: one read of up to the loop's
chunk size, one write), and flow control pauses the reading side while the other side's write
buffer is full, so a slow peer costs at most one buffer of memory per connection. Until
`start()` the two sides are not joined: bytes each side sends are kept (`early`, `up_early`)
for the handler that is still deciding (tunnel preamble and reply, TLS on the accepted side).
A tap, when attached, sees every chunk before it is relayed and never changes it.

Half-close: a FIN (or, through the mesh tunnel, a TLS close_notify) from one side shuts down
writing towards the other (TCP FIN, or close_notify: nodeagent.proxy.tlslayer), and the relay ends
when both sides have. A peer that half-closes and then waits for an answer that never comes
would otherwise hold the relay (and its tunnel) in FIN-WAIT-2/CLOSE-WAIT for ever: once one
side has half-closed, a relay through which nothing moved either way for
`HALF_CLOSED_TIMEOUT` seconds is closed on both sides (config.half_closed_timeout_seconds).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Protocol

from nodeagent.observe.metrics import PodTcpStats
from nodeagent.proxy.tlslayer import TlsLayer

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
CONNECT_TIMEOUT = 10.0
# Bytes kept from one side before the relay starts (preamble, reply, an eager client).
MAX_EARLY_BYTES = 64 * 1024
# How much of a client's first bytes may go to a tunnel upstream with the preamble, before the
# destination agent's reply (`Relay.send_ahead`): a request's head and a small body.
SEND_AHEAD_MAX = 16 * 1024
# Seconds a half-closed relay may stay idle both ways before both sides are closed; the agent
# sets it from its config. It is looked up when a relay half-closes.
HALF_CLOSED_TIMEOUT = 60.0
Address = tuple[str, int]


def original_destination(sock: socket.socket) -> Address:
    """Where the client meant to go before the nat REDIRECT (struct sockaddr_in)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


class Tap(Protocol):
    """Watches a relayed connection (l7relay.ConnectionTap)."""

    def client(self, data: bytes) -> None: ...
    def server(self, data: bytes) -> None: ...
    def closed(self, error: str) -> None: ...


class Gate(Protocol):
    """Stands between the client and the app (authorization per request): what to pass on."""

    def client(self, data: bytes) -> tuple[bytes, bytes, bool]:
        """(to the app, to the client, close both after writing)."""
        ...

    def server(self, data: bytes) -> tuple[bytes, bool]:
        """(to the client in place of `data`, close both after writing)."""
        ...


class _Half(asyncio.Protocol):
    """One end of a relayed connection; hands what it reads to the Relay."""

    __slots__ = ("relay", "transport", "eof", "lost")

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        if self is self.relay.down:
            self.relay.accepted()

    def data_received(self, data: bytes) -> None:
        self.relay.received(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.relay.eof_from(self)
        return True  # keep our writing side open: the peer may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.lost(self, exc)

    def pause_writing(self) -> None:
        other = self.relay.peer_of(self)
        if other is not None:
            other.pause()

    def resume_writing(self) -> None:
        other = self.relay.peer_of(self)
        if other is not None:
            other.resume()

    def pause(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()


class Relay:
    """An accepted (downstream) connection and the upstream it is joined to."""

    __slots__ = (
        "down",
        "up",
        "stats",
        "early",
        "up_early",
        "tap",
        "gate",
        "error",
        "_more",
        "_done",
        "_registry",
        "_connected",
        "_on_accept",
        "_on_finish",
        "_idle_timer",
        "_active",
        "_buffered",
        "send_ahead",
        "_ahead",
        "observes_for_peer",
    )

    def __init__(
        self,
        stats: PodTcpStats,
        registry: set[Relay],
        on_accept: Callable[[Relay], None],
    ) -> None:
        self._on_accept = on_accept
        self.down = _Half(self)
        self.up: _Half | None = None
        self.stats = stats
        self.early = bytearray()
        self.up_early = bytearray()
        self.tap: Tap | None = None
        self.gate: Gate | None = None
        self.error = ""
        self._more: asyncio.Future[None] | None = None
        self._done = False
        self._registry = registry
        self._connected = False
        self._on_finish: list[Callable[[], None]] = []
        # Half-closed idle reaping: the timer, and whether bytes moved since it was armed.
        self._idle_timer: asyncio.TimerHandle | None = None
        self._active = False
        self._buffered = 0
        # The handler allows the client's first bytes to travel with a tunnel preamble, before
        # the destination's reply (no gate rewrites them); `_ahead`: how many of the client's
        # bytes, from the start of `early`, the current upstream already got that way.
        self.send_ahead = False
        self._ahead = 0
        # The destination agent left this connection's request observation to us (observe
        # once, nodeagent.proxy.tunnel.exchange): its tap reports them for both ends.
        self.observes_for_peer = False
        registry.add(self)
        stats.open.inc()
        stats.current.inc()

    @property
    def downstream_socket(self) -> socket.socket:
        assert self.down.transport is not None
        sock: socket.socket = self.down.transport.get_extra_info("socket")
        return sock

    @property
    def connected(self) -> bool:
        return self._connected

    def peer_of(self, half: _Half) -> _Half | None:
        return self.up if half is self.down else self.down

    def on_finish(self, callback: Callable[[], None]) -> None:
        self._on_finish.append(callback)

    # --- events from the two halves -------------------------------------------------------

    def accepted(self) -> None:
        assert self.down.transport is not None
        # Nothing is read until the relay starts (or a handler asks for bytes).
        self.down.transport.pause_reading()
        self._on_accept(self)

    def received(self, half: _Half, data: bytes) -> None:
        self._active = True
        if half is self.down:
            self.stats.read.inc(len(data))
            if self._connected:
                self._from_client(data)
                return
            self.early += data
            if len(self.early) >= MAX_EARLY_BYTES:
                half.pause()
            self._wake()
        elif half is self.up:
            if not self._connected:
                self.up_early += data
                if len(self.up_early) >= MAX_EARLY_BYTES:
                    half.pause()
                self._wake()
                return
            self._to_client(data)
        # else: a discarded upstream attempt; its bytes go nowhere

    def _from_client(self, data: bytes) -> None:
        assert self.up is not None and self.up.transport is not None
        close = False
        if self.gate is not None:
            data, reply, close = self.gate.client(data)
            if reply:
                self._write_down(reply)
        if data:
            tap = self.tap
            if tap is not None:
                try:
                    tap.client(data)
                except Exception:
                    self._tap_failed()
            if self._ahead:
                sent = min(self._ahead, len(data))  # the upstream has these already
                self._ahead -= sent
                data = data[sent:]
            if data:
                self.up.transport.write(data)
        if close:
            self._close_both()

    def _write_down(self, data: bytes) -> None:
        self.stats.write.inc(len(data))
        if self.down.transport is not None and not self.down.lost:
            self.down.transport.write(data)

    def write_to_client(self, data: bytes) -> None:
        """Bytes of the agent's own to the client, between two of the server's chunks (an
        HTTP/2 GOAWAY: nodeagent.proxy.h2drain)."""
        self._write_down(data)

    def _to_client(self, data: bytes) -> None:
        if self.gate is not None:
            if self.tap is not None:
                self._tap_call(self.tap.server, data)
            data, close = self.gate.server(data)
            self._write_down(data)
            if close:
                self._close_both()
            return
        self.stats.write.inc(len(data))
        tap = self.tap
        if tap is not None:
            try:
                tap.server(data)
            except Exception:
                self._tap_failed()
        assert self.down.transport is not None
        self.down.transport.write(data)

    def _tap_call(self, fn: Callable[[bytes], None], data: bytes) -> None:
        try:
            fn(data)
        except Exception:
            self._tap_failed()

    def _tap_failed(self) -> None:
        # Observation must never cost the connection: stop watching, keep relaying.
        log.exception("connection tap failed; relaying the rest unobserved")
        self.tap = None

    def eof_from(self, half: _Half) -> None:
        self._wake()
        if half is not self.down and half is not self.up:
            return
        if not self._connected:
            return  # forwarded when the relay starts
        other = self.peer_of(half)
        if other is not None and other.transport is not None and not other.lost:
            if self.down.eof and (self.up is not None and self.up.eof):
                self._close_both()
                return
            if other.transport.can_write_eof():
                other.transport.write_eof()
        self._arm_idle()

    def lost(self, half: _Half, exc: Exception | None) -> None:
        self._wake()
        if half is not self.down and half is not self.up:
            return  # a discarded upstream attempt
        if exc is not None and not self.error:
            self.error = f"{'client' if half is self.down else 'server'}: {exc}"
        if self._connected or half is self.down:
            other = self.peer_of(half)
            if other is not None and other.transport is not None and not other.lost:
                if exc is not None:
                    # A reset is passed on as a reset: an abort sends a FIN (or nothing, when
                    # ours went out already), and a peer that only closes when told to sits in
                    # CLOSE-WAIT for good with our orphaned socket in FIN-WAIT-2.
                    _reset(other.transport)
                else:
                    other.transport.close()
        if self.down.lost and (self.up is None or self.up.lost or not self._connected):
            self._finish()

    # --- used by handlers -----------------------------------------------------------------

    async def wait_for_bytes(self, count: int, timeout: float, *, upstream: bool = False) -> bool:
        """Wait until `early` (or `up_early`) holds `count` bytes; False on EOF or timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        half = self.up if upstream else self.down
        buf = self.up_early if upstream else self.early
        assert half is not None and half.transport is not None
        half.resume()
        try:
            while len(buf) < count:
                if half.eof or half.lost:
                    return False
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                self._more = loop.create_future()
                try:
                    await asyncio.wait_for(self._more, remaining)
                except TimeoutError:
                    return False
            return True
        finally:
            self._more = None
            if not self._connected:
                half.pause()

    def take_ahead(self, limit: int = SEND_AHEAD_MAX) -> bytes:
        """The client's first bytes, to go to the upstream with a tunnel preamble before the
        destination answers; b"" unless the handler allowed it. They stay the client's: the
        relay still observes them when it starts, and writes the upstream only what follows.
        Bytes not read yet are peeked, so they stay queued in the client's socket."""
        if not self.send_ahead or self._connected:
            return b""
        data = bytes(self.early[:limit])
        transport = self.down.transport
        if len(data) < limit and transport is not None and not self.down.eof:
            data += _peek(transport, limit - len(data))
        self._ahead = len(data)
        return data

    def consume(self, count: int, *, upstream: bool = False) -> bytes:
        buf = self.up_early if upstream else self.early
        taken = bytes(buf[:count])
        del buf[:count]
        return taken

    def _wake(self) -> None:
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    async def start_tls_down(self, context: ssl.SSLContext, *, timeout: float) -> None:
        """Terminate TLS on the accepted side (the mesh tunnel); the relay then sees plaintext."""
        raw = self.down.transport
        assert raw is not None
        layer = TlsLayer(context, self.down, server_side=True)
        self.down.transport = layer.app  # type: ignore[assignment]
        raw.set_protocol(layer)
        layer.connection_made(raw)
        if self.early:
            # Read before the handler got here (a fast client, a loop that delivered the first
            # bytes with the accept): they are the start of the ClientHello.
            early, self.early = bytes(self.early), bytearray()
            layer.data_received(early)
        raw.resume_reading()
        try:
            await asyncio.wait_for(asyncio.shield(layer.handshake), timeout)
        except BaseException:
            raw.abort()
            raise
        layer.pause_reading()

    async def open_upstream(
        self,
        sock: socket.socket,
        *,
        context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        handshake_timeout: float = CONNECT_TIMEOUT,
    ) -> asyncio.Transport:
        """Take over a connected socket as the upstream (with TLS when `context` is given)."""
        loop = asyncio.get_running_loop()
        up = self.up = _Half(self)
        self.up_early.clear()
        self._ahead = 0
        if context is None:
            await loop.create_connection(lambda: up, sock=sock)
        else:
            layer = TlsLayer(
                context, up, server_side=False, server_hostname=server_hostname, session=session
            )
            up.transport = layer.app  # type: ignore[assignment]
            await loop.create_connection(lambda: layer, sock=sock)
            try:
                await asyncio.wait_for(asyncio.shield(layer.handshake), handshake_timeout)
            except BaseException:
                layer.abort()
                raise
        assert up.transport is not None
        if self.down.lost:
            up.transport.close()
            raise ConnectionError("client went away")
        return up.transport

    def new_upstream(self) -> asyncio.Protocol:
        """A fresh upstream half for a transport made elsewhere (a stream of a shared tunnel
        connection): its connection_made() attaches the transport."""
        up = self.up = _Half(self)
        self.up_early.clear()
        self._ahead = 0
        return up

    def detach_down(self) -> tuple[asyncio.Transport, bytes]:
        """Give up the accepted connection to another protocol without closing it (a tunnel
        connection that turned out to carry many app connections): its transport and the bytes
        read so far. The relay is finished."""
        transport = self.down.transport
        assert transport is not None and self.up is None
        early, self.early = bytes(self.early), bytearray()
        self.down.transport = None
        self.down.lost = True
        self._finish()
        return transport, early

    def drop_upstream(self) -> None:
        """Discard a failed upstream attempt without touching the client."""
        up, self.up = self.up, None
        self.up_early.clear()
        self._ahead = 0
        self.observes_for_peer = False
        if up is not None and up.transport is not None and not up.lost:
            up.transport.abort()

    def start(self, tap: Tap | None = None, gate: Gate | None = None) -> None:
        """Join the two sides: flush what each side sent meanwhile, then relay."""
        assert self.up is not None and self.up.transport is not None
        # Bytes sent ahead passed no gate: a handler that gates a connection never allows it.
        assert gate is None or not self._ahead, "bytes went ahead of a gate"
        self.tap = tap
        self.gate = gate
        self._connected = True
        if self.early:
            early, self.early = bytes(self.early), bytearray()
            self._from_client(early)
        if self.up_early:
            up_early, self.up_early = bytes(self.up_early), bytearray()
            self._to_client(up_early)
        if self.down.eof and self.up.transport.can_write_eof():
            self.up.transport.write_eof()
        if self.up.eof and self.down.transport is not None and self.down.transport.can_write_eof():
            self.down.transport.write_eof()
        if self.up.lost:
            self.lost(self.up, None)
            return
        if self.down.eof or self.up.eof:
            self._arm_idle()
        self.down.resume()
        self.up.resume()

    # --- half-closed and idle -------------------------------------------------------------

    def _write_buffered(self) -> int:
        total = 0
        for half in (self.down, self.up):
            if half is not None and half.transport is not None and not half.lost:
                try:
                    total += half.transport.get_write_buffer_size()
                except (AttributeError, RuntimeError):
                    pass
        return total

    def _arm_idle(self) -> None:
        if self._idle_timer is not None or self._done:
            return
        self._active = False
        self._buffered = self._write_buffered()
        self._idle_timer = asyncio.get_running_loop().call_later(
            HALF_CLOSED_TIMEOUT, self._idle_check
        )

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._done:
            return
        buffered = self._write_buffered()
        if self._active or buffered != self._buffered:
            self._arm_idle()  # bytes moved (or a peer drained some): wait another period
            return
        if not self.error:
            self.error = f"half-closed and idle for {HALF_CLOSED_TIMEOUT:g}s"
        log.debug("closing a relay %s", self.error)
        for half in (self.down, self.up):
            if half is None or half.transport is None or half.lost:
                continue
            other = self.peer_of(half)
            if buffered or (other is not None and other.eof and not half.eof):
                # A peer we sent our FIN to and that never answered gets a reset: a graceful
                # close would leave the socket orphaned in FIN-WAIT-2 (and the peer, stuck in
                # CLOSE-WAIT, none the wiser); a peer that reads nothing would hold close().
                _reset(half.transport)
            else:
                half.transport.close()  # it half-closed first: our FIN ends its FIN-WAIT-2

    def refuse(self, error: str = "") -> None:
        """Reset the client, as a closed port would."""
        if error and not self.error:
            self.error = error
        self.drop_upstream()
        transport = self.down.transport
        if transport is not None and not self.down.lost:
            try:
                self.downstream_socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            except OSError:
                pass
            transport.close()
        if self.down.lost or transport is None:
            self._finish()

    def decline(self, error: str = "") -> None:
        """Close the client gracefully (what was written to it, a tunnel reply, still goes)."""
        if error and not self.error:
            self.error = error
        self.drop_upstream()
        if self.down.transport is not None and not self.down.lost:
            self.down.transport.close()
        else:
            self._finish()

    def abort(self) -> None:
        for half in (self.down, self.up):
            if half is not None and half.transport is not None and not half.lost:
                half.transport.abort()

    def hand_over(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Give the accepted connection to another protocol (the L7 path) as streams; the bytes
        kept so far come first. Call `handed_over_done` when that protocol is finished."""
        transport = self.down.transport
        assert transport is not None and self.up is None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=4 * MAX_EARLY_BYTES, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.early:
            reader.feed_data(bytes(self.early))
            self.early.clear()
        if self.down.eof:
            reader.feed_eof()
        transport.resume_reading()
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    def handed_over_done(self) -> None:
        self.down.lost = True
        self._finish()

    def close(self) -> None:
        """Close both sides gracefully (what is buffered still goes, then a FIN each way)."""
        self._close_both()

    def _close_both(self) -> None:
        for half in (self.down, self.up):
            if half is not None and half.transport is not None and not half.lost:
                half.transport.close()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._registry.discard(self)
        self.stats.close.inc()
        self.stats.current.dec()
        if self.tap is not None:
            try:
                self.tap.closed(self.error)
            except Exception:
                log.exception("connection tap failed at close")
        callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("relay finish callback failed")
        # Break the relay <-> halves cycle so the connection's objects (TLS state, buffers,
        # observers) are freed now, by reference counting, rather than whenever the cyclic
        # collector gets round to them: under a burst that was thousands of connections' worth.
        self.tap = None
        self._more = None
        for half in (self.down, self.up):
            if half is not None:
                half.relay = _FINISHED  # type: ignore[assignment]


def _peek(transport: asyncio.BaseTransport, limit: int) -> bytes:
    """Up to `limit` bytes waiting in a connected socket, left there to be read as usual."""
    raw = transport.get_extra_info("socket")
    if raw is None:
        return b""
    sock = socket.socket(fileno=raw.fileno())
    try:
        return sock.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing yet (EAGAIN), or the client is gone: the relay finds out as usual
        return b""
    finally:
        sock.detach()


def _reset(transport: asyncio.Transport) -> None:
    """Abort with a TCP reset (a plain close of a socket whose FIN went out sends none)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
    transport.abort()


class _Finished:
    """What a half points at once its relay is finished: late events go nowhere."""

    down = None

    def received(self, half: _Half, data: bytes) -> None:
        pass

    def eof_from(self, half: _Half) -> None:
        pass

    def lost(self, half: _Half, exc: Exception | None) -> None:
        pass

    def accepted(self) -> None:
        pass

    def peer_of(self, half: _Half) -> _Half | None:
        return None


_FINISHED = _Finished()
