"""The L4 relay: an accepted connection joined to an upstream one, both ways, with half-close.

Bytes move as the event loop hands them over (asyncio Protocols: one read of up to the loop's
chunk size, one write), and flow control pauses the reading side while the other side's write
buffer is full, so a slow peer costs at most one buffer of memory per connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from nodeagent.metrics import PodTcpStats
from nodeagent.podnetns import marked_socket

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80
CONNECT_TIMEOUT = 10.0
# Bytes kept from a client before its upstream is open (only the tunnel reads ahead).
MAX_EARLY_BYTES = 64 * 1024
Address = tuple[str, int]


def original_destination(sock: socket.socket) -> Address:
    """Where the client meant to go before the nat REDIRECT (struct sockaddr_in)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port


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
        self.relay.peer_of(self).pause()

    def resume_writing(self) -> None:
        self.relay.peer_of(self).resume()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()


# Decides where an accepted connection goes: returns the upstream address, or None to refuse.
# It may await more client bytes (relay.early) and may consume them (relay.consume).
Router = Callable[["Relay"], Awaitable[Address | None]]


class Relay:
    """An accepted (downstream) connection and the upstream it is joined to."""

    __slots__ = (
        "down",
        "up",
        "stats",
        "early",
        "_more",
        "_done",
        "_registry",
        "_connected",
        "_on_accept",
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
        self._more: asyncio.Future[None] | None = None
        self._done = False
        self._registry = registry
        self._connected = False
        registry.add(self)
        stats.open.inc()
        stats.current.inc()

    @property
    def downstream_socket(self) -> socket.socket:
        assert self.down.transport is not None
        sock: socket.socket = self.down.transport.get_extra_info("socket")
        return sock

    def peer_of(self, half: _Half) -> _Half:
        if half is self.down:
            return self.up if self.up is not None else _Half(self)
        return self.down

    # --- events from the two halves -------------------------------------------------------

    def accepted(self) -> None:
        assert self.down.transport is not None
        # Nothing is read until the upstream is open (or a router asks for bytes).
        self.down.transport.pause_reading()
        self._on_accept(self)

    def received(self, half: _Half, data: bytes) -> None:
        if half is self.down:
            self.stats.read.inc(len(data))
            if self._connected:
                assert self.up is not None and self.up.transport is not None
                self.up.transport.write(data)
                return
            self.early += data
            if len(self.early) >= MAX_EARLY_BYTES:
                half.pause()
            self._wake()
        else:
            self.stats.write.inc(len(data))
            assert self.down.transport is not None
            self.down.transport.write(data)

    def eof_from(self, half: _Half) -> None:
        if half is self.down:
            self._wake()
            if not self._connected:
                return  # forwarded once the upstream is open
        other = self.peer_of(half)
        if other.transport is not None and not other.lost:
            if self.down.eof and (self.up is not None and self.up.eof):
                self._close_both()
            elif other.transport.can_write_eof():
                other.transport.write_eof()

    def lost(self, half: _Half, exc: Exception | None) -> None:
        self._wake()
        other = self.peer_of(half)
        if other.transport is not None and not other.lost:
            if exc is not None:
                other.transport.abort()
            else:
                other.transport.close()
        if self.down.lost and (self.up is None or self.up.lost or not self._connected):
            self._finish()

    # --- used by routers ------------------------------------------------------------------

    async def wait_for_bytes(self, count: int, timeout: float) -> bool:
        """Wait until `early` holds at least `count` bytes; False on EOF or timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self.down.transport is not None
        self.down.transport.resume_reading()
        try:
            while len(self.early) < count:
                if self.down.eof or self.down.lost:
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
            if not self.down.lost:
                self.down.transport.pause_reading()

    def consume(self, count: int) -> bytes:
        taken = bytes(self.early[:count])
        del self.early[:count]
        return taken

    def _wake(self) -> None:
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    # --- life cycle -----------------------------------------------------------------------

    async def run(
        self,
        router: Router,
        *,
        netns: str,
        mark: int,
        executor: Executor,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        """Route, open the upstream from inside `netns` with the mark, then start relaying."""
        loop = asyncio.get_running_loop()
        sock: socket.socket | None = None
        try:
            target = await router(self)
            if target is None or self.down.lost:
                self.refuse()
                return
            sock = await loop.run_in_executor(executor, lambda: marked_socket(netns, mark=mark))
            await asyncio.wait_for(loop.sock_connect(sock, target), connect_timeout)
            if self.down.lost:
                sock.close()
                return
            up = self.up = _Half(self)
            await loop.create_connection(lambda: up, sock=sock)
            sock = None  # the transport owns it now
            if self.down.lost:
                assert up.transport is not None
                up.transport.close()
                return
        except (OSError, TimeoutError) as exc:
            log.debug("upstream connect failed: %s", exc)
            self.stats.failures.inc()
            if sock is not None:
                sock.close()
            self.refuse()
            return
        except asyncio.CancelledError:
            if sock is not None:
                sock.close()
            self.abort()
            raise
        self._connected = True
        assert self.up is not None and self.up.transport is not None
        if self.early:
            self.up.transport.write(bytes(self.early))
            self.early.clear()
        if self.down.eof:
            self.up.transport.write_eof()
        self.down.resume()

    def refuse(self) -> None:
        """Reset the client, as a closed port would."""
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

    def abort(self) -> None:
        for half in (self.down, self.up):
            if half is not None and half.transport is not None and not half.lost:
                half.transport.abort()

    def _close_both(self) -> None:
        for half in (self.down, self.up):
            if half is not None and half.transport is not None and not half.lost:
                half.transport.close()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._registry.discard(self)
        self.stats.close.inc()
        self.stats.current.dec()
