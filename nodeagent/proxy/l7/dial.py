"""The L7 path's upstream connections: dialled straight to the chosen endpoint's agent.

The endpoint is already chosen (per request, by the L7 balancer), so the connection goes where
the relay's own dial would take an app connection to that pod: `outbound.dial_upstream` (passed
in by the outbound handler), with the client pod's identity and mark, the mTLS tunnel to a meshed
endpoint and the fail-closed rules, and no second trip through the pod's outbound listener (which
cost a second accept, a second routing and a second observation of every request). The tunnel
the relay machinery opened is then handed to asyncio streams for the HTTP code.

Each upstream connection is observed as an outbound TCP connection of the client pod (opened,
closed, bytes each way), as the relay's pass observed it before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from nodeagent.observe import peers
from nodeagent.observe.events import TcpClosed, TcpOpened
from nodeagent.protocol.preamble import PreambleError
from nodeagent.proxy.l4proxy import CONNECT_TIMEOUT, Relay
from nodeagent.proxy.routing import Target
from nodeagent.proxy.tunnel import HANDSHAKE_TIMEOUT, TunnelRefused
from nodemesh.model import PodInfo, PodKey

if TYPE_CHECKING:
    from nodeagent.proxy.listeners import PodListeners

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
STREAM_LIMIT = 64 * 1024  # what a StreamReader holds before it pauses its transport


class Dial(Protocol):
    """outbound.dial_upstream: open `relay`'s upstream to `target` as `pod`; True when mTLS."""

    def __call__(
        self,
        relay: Relay,
        pod: Any,
        info: PodInfo | None,
        target: Target,
        *,
        opaque: bool,
        timeout: float,
        handshake: float = HANDSHAKE_TIMEOUT,
    ) -> Awaitable[bool]: ...


def _no_accept(relay: Relay) -> None:
    pass


class _Counted(asyncio.StreamReaderProtocol):
    """A stream protocol that counts what it reads and reports the connection's end once."""

    def __init__(
        self, reader: asyncio.StreamReader, on_lost: Callable[[_Counted, str], None]
    ) -> None:
        super().__init__(reader)
        self.read_bytes = 0
        self.written = 0
        self._on_lost: Callable[[_Counted, str], None] | None = on_lost

    def data_received(self, data: bytes) -> None:
        self.read_bytes += len(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost(self, str(exc) if exc else "")
        super().connection_lost(exc)


class _CountingWriter(asyncio.StreamWriter):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        protocol = self._protocol  # type: ignore[attr-defined]
        protocol.written += len(data)
        super().write(data)


async def connect(pod: PodListeners, dial: Dial, target: Target, *, protocol: str) -> Streams:
    """A connection (streams) from `pod` to `target`, through its agent's tunnel when meshed.
    Raises ConnectionError (or OSError, TimeoutError) when it cannot be made."""
    rt = pod.runtime
    p = pod.pod
    info = rt.table.pod(PodKey(p.namespace, p.name))
    relay = Relay(pod.outbound, set(), _no_accept)
    try:
        tls = await dial(
            relay, pod, info, target, opaque=False, timeout=CONNECT_TIMEOUT,
            handshake=HANDSHAKE_TIMEOUT,
        )  # fmt: skip
    except (TunnelRefused, PreambleError) as exc:
        relay.drop_upstream()
        relay.handed_over_done()
        raise ConnectionError(str(exc) or type(exc).__name__) from exc
    except BaseException:
        relay.drop_upstream()
        relay.handed_over_done()
        raise
    up = relay.up
    assert up is not None and up.transport is not None
    if up.lost:
        relay.handed_over_done()
        raise ConnectionError("the upstream closed at once")
    conn_id = next(rt.conn_ids)
    src = peers.of_pod(info, ip=p.ip, namespace=p.namespace, name=p.name)
    dst = peers.of_target(target, None)
    opened = time.monotonic()
    rt.sink.tcp_opened(TcpOpened(conn_id, "outbound", src, dst, protocol, tls, time.time()))

    def lost(counted: _Counted, error: str) -> None:
        rt.sink.tcp_closed(
            TcpClosed(
                conn_id, "outbound", src, dst, protocol, tls, counted.written,
                counted.read_bytes, time.monotonic() - opened, error,
            )
        )  # fmt: skip

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    stream = _Counted(reader, lost)
    transport = up.transport
    transport.set_protocol(stream)
    stream.connection_made(transport)
    if relay.up_early:
        stream.data_received(bytes(relay.up_early))
        relay.up_early.clear()
    if up.eof:
        reader.feed_eof()
    transport.resume_reading()
    relay.handed_over_done()  # the relay carried the dial only: the streams own the tunnel now
    return reader, _CountingWriter(transport, stream, reader, loop)
