"""A meshed pod's listeners (4140, 4141, 4143, 4153): opened inside its netns, served here.

The sockets are made on an executor thread (setns never runs on the loop thread); once bound
they belong to the pod's netns whatever thread uses them, and the event loop serves them all.
Each pod costs five sockets and a few small objects: no thread, no task while idle.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodeagent.handover.wire import SocketEntry
from nodeagent.observe.events import NullSink, ObservationSink
from nodeagent.observe.metrics import PodTcpStats, forget_pod
from nodeagent.pod import PodAddress
from nodeagent.protocol.detect import ServerFirstMemory
from nodeagent.proxy import inbound, outbound
from nodeagent.proxy.balancer import Balancer
from nodeagent.proxy.dnsforward import UdpDnsForwarder, serve_tcp, upstream_resolver
from nodeagent.proxy.dnsnames import DnsNames
from nodeagent.proxy.h2drain import PinnedRelays
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.l7relay import DETECT_TIMEOUT
from nodeagent.proxy.mux import MuxSession
from nodeagent.proxy.routing import Routes
from nodeagent.proxy.socketstock import SocketStock
from nodeagent.proxy.tunnelpool import TunnelPool
from nodeagent.upstream.certstore import CertStore
from nodeagent.upstream.table import DestinationTable
from nodemesh import ports, tasks
from nodemesh.model import ServiceKey
from nodemesh.netns import NetnsHandle, socket_in_netns

log = logging.getLogger(__name__)

BACKLOG = 1024


class SocketKeeper(Protocol):
    """Holds a copy of each listening socket while it is served (nodeagent.handover.keeper)."""

    def keep(self, entries: list[tuple[SocketEntry, socket.socket]]) -> None: ...
    def drop(self, netns: str = "") -> None: ...


class ListenerError(OSError):
    """A pod's listeners could not be opened."""


@dataclass
class ProxyRuntime:
    """What every pod's listeners share: the table and what is derived from it, certificates,
    the observation sink, the mark, the netns socket executor and the live relays."""

    mark: int
    executor: Executor
    table: DestinationTable = field(default_factory=lambda: DestinationTable(""))
    sink: ObservationSink = field(default_factory=NullSink)
    # None: no trust anchor configured, meshed destinations get plain connections.
    certs: CertStore | None = None
    dns_names: DnsNames | None = None
    balancer: Balancer = field(default_factory=Balancer)
    server_first: ServerFirstMemory = field(default_factory=ServerFirstMemory)
    detect_timeout: float = DETECT_TIMEOUT
    # Connect to apps from the client's address (needs the pod's transparent rules).
    transparent: bool = True
    relays: set[Relay] = field(default_factory=set)
    # The most relays open at once since the agent last looked (it then resets this).
    peak_relays: int = 0
    conn_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    # Tunnel handshakes made, "full" or "resumed".
    handshakes: Counter[str] = field(default_factory=Counter)
    keeper: SocketKeeper | None = None
    # Carry app connections to peer agents as streams of a few shared mTLS connections
    # (nodeagent.proxy.tunnelpool); False: one tunnel connection (and handshake) each.
    multiplex: bool = True
    # Offer peer agents to observe relayed connections' requests for them (observe once,
    # nodeagent.proxy.tunnel.exchange); an agent takes the offer from its peers either way.
    observe_once: bool = True
    tunnels: TunnelPool | None = None
    # Shared tunnel connections this agent accepted (told to go away when it drains).
    mux_sessions: set[MuxSession] = field(default_factory=set)
    draining: bool = False
    # The L7 path's per-pod state (nodeagent.proxy.l7.takeover.PodL7), by pod netns.
    l7: dict[str, Any] = field(default_factory=dict)
    # Serves a connection captured to a router Service's VIP (nodeagent.proxy.router).
    host_routed: Handler | None = None
    routes: Routes = field(init=False)
    # Relayed connections to Service VIPs, looked at again when their Service changes.
    pinned: PinnedRelays = field(default_factory=PinnedRelays)

    def __post_init__(self) -> None:
        self.routes = Routes(self.table)

    def services_changed(self, keys: Iterable[ServiceKey]) -> int:
        """A table update touched these Services: HTTP/2 connections relayed to an endpoint
        that left, or to a Service that now balances per request, are told to go away."""
        if not self.pinned.by_service:
            return 0
        return self.pinned.services_changed(
            keys,
            routes=self.routes,
            route_table=self.table.routes,
            call_later=asyncio.get_running_loop().call_later,
        )

    def tunnel_pool(self) -> TunnelPool | None:
        """The shared tunnel connections, made on first use (None: multiplexing is off)."""
        if not self.multiplex or self.certs is None:
            return None
        if self.tunnels is None:
            self.tunnels = TunnelPool(trust_anchors_pem=self.certs.trust_anchors_pem)
        return self.tunnels

    def go_away(self) -> None:
        """The agent drains: shared tunnel connections take no new app connection (peers
        open new ones, to this agent's successor) and close once their streams have ended."""
        self.draining = True
        if self.tunnels is not None:
            self.tunnels.go_away()
        for session in list(self.mux_sessions):
            session.go_away()


# Serves one accepted connection: route it, open its upstream, start (or refuse) the relay.
Handler = Callable[[Relay, "PodListeners"], Awaitable[None]]


def _bind_all(netns: str | NetnsHandle) -> dict[str, socket.socket]:
    """Blocking: the five listening sockets, made inside `netns`."""
    made: dict[str, socket.socket] = {}
    specs = [
        ("outbound", socket.SOCK_STREAM, "0.0.0.0", ports.OUTBOUND),
        ("inbound", socket.SOCK_STREAM, "0.0.0.0", ports.INBOUND),
        ("tunnel", socket.SOCK_STREAM, "0.0.0.0", ports.TUNNEL),
        ("dns-tcp", socket.SOCK_STREAM, "0.0.0.0", ports.DNS),
        # REDIRECT in OUTPUT sends local UDP to 127.0.0.1, so that is where the answer must
        # come from for conntrack to map it back to the resolver the app asked.
        ("dns-udp", socket.SOCK_DGRAM, "127.0.0.1", ports.DNS),
    ]
    try:
        for name, kind, host, port in specs:
            sock = socket_in_netns(netns, socket.AF_INET, kind | socket.SOCK_CLOEXEC)
            made[name] = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # A restarted agent can bind next to one still draining.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in made.values():
            sock.close()
        raise ListenerError(exc.errno, f"cannot listen in {netns}: {exc.strerror or exc}") from exc
    return made


class PodListeners:
    """The listeners of one enrolled pod and the routing decision behind each."""

    def __init__(
        self,
        pod: PodAddress,
        runtime: ProxyRuntime,
        inherited: dict[str, socket.socket] | None = None,
    ) -> None:
        self.pod = pod
        self.runtime = runtime
        # Sockets taken over from the previous agent (nodeagent.handover.sockets), used instead of
        # binding new ones: the same kernel sockets, accept queues and all.
        self.inherited = inherited
        # The listening sockets as served, by name: what a successor is handed.
        self.sockets: dict[str, socket.socket] = {}
        self.servers: dict[str, asyncio.Server] = {}
        self.dns: UdpDnsForwarder | None = None
        self.outbound = PodTcpStats("outbound", pod.namespace, pod.name)
        self.inbound = PodTcpStats("inbound", pod.namespace, pod.name)
        self._resolver: str | None = None
        # The pod's netns held open while it is enrolled: upstream sockets enter through it.
        self.held_netns: NetnsHandle | None = None
        # Sockets made ahead in the pod's netns, by kind (nodeagent.proxy.socketstock).
        self.stocks: dict[str, SocketStock] = {}

    def stock(self, kind: str, make: Callable[[], socket.socket]) -> SocketStock:
        """The pod's stock of `kind` sockets (made by `make` on the executor), begun on first
        use; a closed pod's stock is closed and stays empty."""
        found = self.stocks.get(kind)
        if found is None:
            found = self.stocks[kind] = SocketStock(make, executor=self.runtime.executor)
            if not self.servers:
                found.close()  # not serving (closed, or not open yet): make nothing ahead
        return found

    @property
    def netns(self) -> str | NetnsHandle:
        """Where this pod's sockets are made: the held netns, else (not held) its path."""
        return self.held_netns if self.held_netns is not None else self.pod.netns

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        # Opened by the first socket made for the pod (on the executor thread), held from then.
        self.held_netns = NetnsHandle(self.pod.netns, lazy=True)
        if self.inherited is not None:
            socks, self.inherited = self.inherited, None
        else:
            try:
                socks = await loop.run_in_executor(self.runtime.executor, _bind_all, self.netns)
            except BaseException:
                self.close(forget_metrics=True)  # see below
                raise
        self.sockets = dict(socks)
        try:
            handlers: dict[str, tuple[Handler, PodTcpStats]] = {
                "outbound": (outbound.handle, self.outbound),
                "inbound": (inbound.handle_plain, self.inbound),
                "tunnel": (inbound.handle_tunnel, self.inbound),
            }
            for name, (handler, stats) in handlers.items():
                self.servers[name] = await loop.create_server(
                    self._factory(handler, stats), sock=socks.pop(name)
                )
            self._resolver = upstream_resolver(self.pod.netns)
            forwarder = UdpDnsForwarder(
                netns=self.netns,
                namespace=self.pod.namespace,
                pod=self.pod.name,
                upstream=lambda: self._resolver,
                mark=self.runtime.mark,
                executor=self.runtime.executor,
                names=self.runtime.dns_names,
            )
            resolver = forwarder.resolver
            self.servers["dns-tcp"] = await asyncio.start_server(
                lambda r, w: serve_tcp(resolver, r, w), sock=socks.pop("dns-tcp")
            )
            await loop.create_datagram_endpoint(lambda: forwarder, sock=socks.pop("dns-udp"))
            self.dns = forwarder
            if self.runtime.keeper is not None:
                self.runtime.keeper.keep(
                    [(SocketEntry("pod", n, self.pod.netns), s) for n, s in self.sockets.items()]
                )
        except BaseException:
            for sock in socks.values():
                sock.close()
            # Its metric series too: an enrolment that failed here is not retried with this
            # object, and a series left behind would stay on /metrics for the agent's life.
            self.close(forget_metrics=True)
            raise

    def is_open(self) -> bool:
        return (
            len(self.servers) == 4
            and all(s.is_serving() for s in self.servers.values())
            and self.dns is not None
            and self.dns.transport is not None
            and not self.dns.transport.is_closing()
        )

    def close(self, *, forget_metrics: bool = False) -> None:
        """Stop accepting; connections already relayed run on until they end."""
        if self.sockets and self.runtime.keeper is not None:
            self.runtime.keeper.drop(self.pod.netns)
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        self.sockets.clear()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        for stock in self.stocks.values():
            stock.close()
        if self.runtime.tunnels is not None:
            # Its shared tunnel connections (they hold its netns) end with their last stream.
            self.runtime.tunnels.go_away(netns=self.pod.netns)
        if self.held_netns is not None:
            # Connections still draining make their sockets by the path from now on.
            self.held_netns.close()
        l7 = self.runtime.l7.pop(self.pod.netns, None)
        if l7 is not None:
            l7.close()  # the L7 path's pooled upstream connections of this pod
        if forget_metrics:
            forget_pod(self.pod.namespace, self.pod.name)

    def _factory(self, handler: Handler, stats: PodTcpStats) -> Callable[[], asyncio.Protocol]:
        runtime = self.runtime

        def start(relay: Relay) -> None:
            tasks.spawn(self._serve(handler, relay), name="relay")

        relays = runtime.relays

        def accepted() -> asyncio.Protocol:
            relay = Relay(stats, relays, start)
            if len(relays) > runtime.peak_relays:
                runtime.peak_relays = len(relays)
            return relay.down

        return accepted

    def serve(self, handler: Handler, relay: Relay) -> None:
        """Serve `relay` (accepted elsewhere: a stream of a shared tunnel connection)."""
        tasks.spawn(self._serve(handler, relay), name="relay")

    async def _serve(self, handler: Handler, relay: Relay) -> None:
        try:
            await handler(relay, self)
        except asyncio.CancelledError:
            relay.abort()
            raise
        except Exception:
            # A bug in one connection's handling must not take the listener down.
            log.exception("serving a connection of %s/%s failed", self.pod.namespace, self.pod.name)
            relay.refuse("internal error")
