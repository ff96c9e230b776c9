"""The source agent's shared tunnel connections: one TLS handshake for many app connections.

`TunnelPool.open()` gives an outbound relay its upstream as a stream of a multiplexed mTLS
connection (nodeagent.proxy.mux) to the destination pod's agent, made as the source workload
(its certificate, from inside its netns, so the destination agent authenticates and authorizes
exactly whom it did before), then exchanges the same preamble and reply as a one-connection
tunnel. Which connection, when to dial one and when to close one: nodeagent.proxy.pooling.
A destination agent that does not agree on multiplexing (an older version) raises `NoMux`: the
caller opens a tunnel of its own, and the pool remembers that peer for a while.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Any

from nodeagent.observe.metrics import TUNNEL_CONNECTIONS, TUNNEL_HANDSHAKES, TUNNEL_STREAMS
from nodeagent.protocol import mux as wire
from nodeagent.proxy import pooling
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.mux import MuxSession, MuxStream, StreamRefused
from nodeagent.proxy.routing import Target
from nodeagent.proxy.tlslayer import TlsLayer
from nodeagent.proxy.tunnel import PeerSilent, TunnelRefused, exchange
from nodeagent.upstream.certstore import Held, server_name
from nodemesh import certs

log = logging.getLogger(__name__)

SWEEP_EVERY = 5.0
# A stream whose first answer does not come in this long marks its connection broken (a peer
# node gone silent): later app connections dial afresh instead of waiting on it.
STREAM_REPLY_TIMEOUT = 10.0
# A live destination agent answers a new stream's CONNECT as soon as it reads it. A stream that
# heard nothing at all from the peer in this long (at least; `answer_within` may say longer)
# gives up, as a TCP connect to a node that is gone would, so the app connection tries another
# endpoint in seconds, not STREAM_REPLY_TIMEOUT; the connection takes no new stream.
PEER_SILENT_AFTER = 2.0
# Stream opens tried again on a fresh connection when the old one refused them (GOAWAY race).
REOPEN_ATTEMPTS = 2


class NoMux(Exception):
    """The destination agent does not multiplex: open a tunnel connection of its own."""


class TunnelPool:
    def __init__(self, *, trust_anchors_pem: bytes, state: pooling.PoolState | None = None) -> None:
        self.trust_anchors_pem = trust_anchors_pem
        self.state = state or pooling.PoolState()
        self._dialing: dict[Hashable, asyncio.Future[pooling.Carrier]] = {}
        self._contexts: dict[int, tuple[Held, ssl.SSLContext]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    # --- public ---------------------------------------------------------------------------

    async def open(
        self,
        relay: Relay,
        *,
        key: Hashable,
        connect: Callable[[], Awaitable[socket.socket]],
        held: Held,
        target: Target,
        source_namespace: str,
        source_pod: str,
        opaque: bool,
        timeout: float,
        answer_within: float = 0.0,
        observe: bool = False,
    ) -> bool:
        """Make a stream of a shared connection `relay`'s upstream and get it accepted; True
        when a new connection (and handshake) was needed for it. `connect` gives a socket
        connected to the destination agent's tunnel port from the source's netns.
        `observe`: offer to observe for the destination (tunnel.exchange).
        `answer_within`: how long the caller would wait for a TCP connect to the destination
        (the peer must be heard from within that, and PEER_SILENT_AFTER at least)."""
        loop = asyncio.get_running_loop()
        if self.state.is_legacy(target.ip, now=loop.time()):
            raise NoMux(target.ip)
        dialled = False
        attempt = 0
        while attempt <= REOPEN_ATTEMPTS:
            carrier = self.state.pick(key, now=loop.time(), credential=held)
            if carrier is None:
                carrier = await self._dial_once(
                    key, connect=connect, held=held, target=target, timeout=timeout
                )
                dialled = True
            session: MuxSession = carrier.conn
            if not session.usable:
                carrier.going_away = True  # its peer drains: never again
                if dialled:
                    attempt += 1
                continue
            up = relay.new_upstream()
            try:
                stream = session.open_stream(up, (target.ip, target.port))
            except StreamRefused:
                carrier.going_away = True
                relay.drop_upstream()
                attempt += 1
                continue
            self.state.stream_opened(carrier)
            stream.extra["carrier"] = carrier
            TUNNEL_STREAMS.labels("client").inc()
            if relay.down.lost:
                relay.drop_upstream()
                raise ConnectionError("client went away")
            opened_at = loop.time()
            try:
                await exchange(
                    relay,
                    target=target,
                    source_namespace=source_namespace,
                    source_pod=source_pod,
                    opaque=opaque,
                    observe=observe,
                    timeout=STREAM_REPLY_TIMEOUT,
                    silent=(
                        max(answer_within, PEER_SILENT_AFTER),
                        partial(_heard_since, session, opened_at),
                    ),
                )
            except PeerSilent:
                # Its other streams go on (a busy peer may still answer them); new app
                # connections dial afresh, and a connection that is truly gone ends by TCP
                # keepalive or once its streams are done.
                carrier.broken = True
                raise
            except TunnelRefused:
                if isinstance(stream.lost_with, StreamRefused) and attempt < REOPEN_ATTEMPTS:
                    relay.drop_upstream()
                    carrier.going_away = True
                    attempt += 1
                    continue  # a draining peer refused it: try a fresh connection
                if (
                    not stream.lost
                    and not session.closed
                    and loop.time() - session.last_read > (STREAM_REPLY_TIMEOUT / 2)
                ):
                    carrier.broken = True  # nothing heard from the peer for a while
                    session.close()
                raise
            return dialled
        raise TunnelRefused("the destination agent refused every stream (going away)")

    def go_away(self, *, netns: str | None = None) -> None:
        """Close every connection (of the source pod in `netns`: it left) once its streams are
        done, and open no new stream on it (the agent is draining)."""
        if netns is None:
            self.closed = True
            if self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
        for carrier in list(self.state.all()):
            key = carrier.key  # see pool_key: the source pod's netns first
            if netns is not None and not (isinstance(key, tuple) and key[0] == str(netns)):
                continue
            carrier.going_away = True
            session: MuxSession = carrier.conn
            session.going_away = True
            if not session.streams:
                session.close()

    # --- dialling -------------------------------------------------------------------------

    async def _dial_once(
        self,
        key: Hashable,
        *,
        connect: Callable[[], Awaitable[socket.socket]],
        held: Held,
        target: Target,
        timeout: float,
    ) -> pooling.Carrier:
        """A new connection for `key`; concurrent callers share one dial."""
        pending = self._dialing.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[pooling.Carrier] = asyncio.get_running_loop().create_future()
        self._dialing[key] = fut
        try:
            carrier = await self._dial(key, connect=connect, held=held, target=target,
                                       timeout=timeout)  # fmt: skip
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters (if any) get it through the shield
            raise
        else:
            fut.set_result(carrier)
            return carrier
        finally:
            self._dialing.pop(key, None)

    def _context(self, held: Held) -> ssl.SSLContext:
        found = self._contexts.get(id(held))
        if found is not None and found[0] is held:
            return found[1]
        context = certs.client_context(held.certified, trust_anchors_pem=self.trust_anchors_pem)
        context.set_alpn_protocols([wire.ALPN])
        if len(self._contexts) > 256:
            self._contexts.clear()
        self._contexts[id(held)] = (held, context)
        return context

    async def _dial(
        self,
        key: Hashable,
        *,
        connect: Callable[[], Awaitable[socket.socket]],
        held: Held,
        target: Target,
        timeout: float,
    ) -> pooling.Carrier:
        loop = asyncio.get_running_loop()
        sock = await connect()
        carrier = pooling.Carrier(key=key, created=loop.time(), credential=held)
        session = MuxSession(
            client_side=True,
            on_done=lambda stream: self._stream_done(stream),
            on_lost=lambda s: self._lost(carrier),
        )
        layer = TlsLayer(
            self._context(held), session, server_side=False,
            server_hostname=server_name(target.identity),
        )  # fmt: skip
        layer.pause_reading()  # nothing reaches the session before it has started
        try:
            await loop.create_connection(lambda: layer, sock=sock)
            await asyncio.wait_for(asyncio.shield(layer.handshake), timeout)
        except BaseException:
            layer.abort()
            sock.close()
            raise
        TUNNEL_HANDSHAKES.labels("client", "full").inc()
        try:
            certs.check_peer(layer.sslobj, expected=target.identity)
        except certs.PeerRejected as exc:
            layer.abort()
            raise TunnelRefused(str(exc)) from exc
        if layer.sslobj.selected_alpn_protocol() != wire.ALPN:
            layer.close()
            self.state.mark_legacy(target.ip, now=loop.time())
            raise NoMux(target.ip)
        carrier.conn = session
        session.start(layer.app)
        self.state.added(carrier)
        TUNNEL_CONNECTIONS.labels("client").inc()
        self._arm_sweep()
        return carrier

    # --- bookkeeping ----------------------------------------------------------------------

    def _stream_done(self, stream: MuxStream) -> None:
        carrier = stream.extra.get("carrier")
        if carrier is not None:
            self.state.stream_closed(carrier, now=asyncio.get_running_loop().time())

    def _lost(self, carrier: pooling.Carrier) -> None:
        if carrier.conn is not None:
            TUNNEL_CONNECTIONS.labels("client").dec()
        self.state.lost(carrier)

    def _arm_sweep(self) -> None:
        if self._sweeper is None and not self.closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for carrier in self.state.retire(now=now):
            session: MuxSession = carrier.conn
            session.close()
        if any(True for _ in self.state.all()):
            self._arm_sweep()


def _heard_since(session: MuxSession, since: float) -> bool:
    return session.last_read >= since


def pool_key(*, netns: Any, source_ip: str, identity: str, target: Target) -> Hashable:
    """Connections are shared by app connections of one source pod (its netns and address: the
    destination sees the pod's own address) and identity, to one destination pod and identity."""
    return (str(netns), source_ip, identity, target.ip, target.identity)
