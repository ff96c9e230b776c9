"""A meshed pod's listeners (4140, 4141, 4143, 4153): opened inside its netns, served here.

The sockets are made on an executor thread (setns never runs on the loop thread); once bound
they belong to the pod's netns whatever thread uses them, and the event loop serves them all.
Each pod costs five sockets and a few small objects: no thread, no task while idle.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from nodeagent import podplan
from nodeagent.dnsforward import DNS_PORT, UdpDnsForwarder, upstream_resolver
from nodeagent.l4proxy import Address, Relay, Router, original_destination
from nodeagent.metrics import PodTcpStats, forget_pod
from nodeagent.protocol import preamble
from nodemesh import tasks
from nodemesh.netns import socket_in_netns

log = logging.getLogger(__name__)

BACKLOG = 1024
PREAMBLE_TIMEOUT = 5.0


class ListenerError(OSError):
    """A pod's listeners could not be opened."""


@dataclass(frozen=True)
class PodAddress:
    """What the proxy needs to know about the pod it serves."""

    namespace: str
    name: str
    netns: str
    ip: str


@dataclass
class ProxyRuntime:
    """What every pod's listeners share: the mark, the netns socket executor, live relays."""

    mark: int
    executor: Executor
    relays: set[Relay] = field(default_factory=set)


def _bind_all(netns: str) -> dict[str, socket.socket]:
    """Blocking: the five listening sockets, made inside `netns`."""
    made: dict[str, socket.socket] = {}
    specs = [
        ("outbound", socket.SOCK_STREAM, "0.0.0.0", podplan.OUTBOUND_PORT),
        ("inbound", socket.SOCK_STREAM, "0.0.0.0", podplan.INBOUND_PORT),
        ("tunnel", socket.SOCK_STREAM, "0.0.0.0", podplan.TUNNEL_PORT),
        ("dns-tcp", socket.SOCK_STREAM, "0.0.0.0", podplan.DNS_PORT),
        # REDIRECT in OUTPUT sends local UDP to 127.0.0.1, so that is where the answer must
        # come from for conntrack to map it back to the resolver the app asked.
        ("dns-udp", socket.SOCK_DGRAM, "127.0.0.1", podplan.DNS_PORT),
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

    def __init__(self, pod: PodAddress, runtime: ProxyRuntime) -> None:
        self.pod = pod
        self.runtime = runtime
        self.servers: dict[str, asyncio.Server] = {}
        self.dns: UdpDnsForwarder | None = None
        self.outbound = PodTcpStats("outbound", pod.namespace, pod.name)
        self.inbound = PodTcpStats("inbound", pod.namespace, pod.name)
        self._resolver: str | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        socks = await loop.run_in_executor(self.runtime.executor, _bind_all, self.pod.netns)
        try:
            routers: dict[str, tuple[Router, PodTcpStats]] = {
                "outbound": (self._route_outbound, self.outbound),
                "inbound": (self._route_inbound, self.inbound),
                "tunnel": (self._route_tunnel, self.inbound),
                "dns-tcp": (self._route_dns, self.outbound),
            }
            for name, (router, stats) in routers.items():
                self.servers[name] = await loop.create_server(
                    self._factory(router, stats), sock=socks.pop(name)
                )
            self._resolver = upstream_resolver(self.pod.netns)
            forwarder = UdpDnsForwarder(
                netns=self.pod.netns,
                namespace=self.pod.namespace,
                pod=self.pod.name,
                upstream=lambda: self._resolver,
                mark=self.runtime.mark,
                executor=self.runtime.executor,
            )
            await loop.create_datagram_endpoint(lambda: forwarder, sock=socks.pop("dns-udp"))
            self.dns = forwarder
        except BaseException:
            for sock in socks.values():
                sock.close()
            self.close()
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
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        if forget_metrics:
            forget_pod(self.pod.namespace, self.pod.name)

    def _factory(self, router: Router, stats: PodTcpStats) -> Callable[[], asyncio.Protocol]:
        runtime, netns = self.runtime, self.pod.netns

        def start(relay: Relay) -> None:
            tasks.spawn(
                relay.run(router, netns=netns, mark=runtime.mark, executor=runtime.executor),
                name="relay",
            )

        return lambda: Relay(stats, runtime.relays, start).down

    # --- where each listener's connections go ---------------------------------------------

    async def _route_outbound(self, relay: Relay) -> Address | None:
        sock = relay.downstream_socket
        target = original_destination(sock)
        if target == sock.getsockname()[:2]:
            return None  # reached 4140 directly, not through the redirect: nowhere to go
        return target

    async def _route_inbound(self, relay: Relay) -> Address | None:
        ip, port = original_destination(relay.downstream_socket)
        if port in podplan.AGENT_PORTS:
            return None  # connecting back to one of our own listeners would loop
        return ip, port

    async def _route_tunnel(self, relay: Relay) -> Address | None:
        # TODO(data plane): this is where mTLS terminates and the peer identity is checked.
        # Until then the tunnel is plain TCP: a preamble names the app port, nothing else.
        if not await relay.wait_for_bytes(preamble.HEADER_SIZE, PREAMBLE_TIMEOUT):
            return None
        try:
            size = preamble.preamble_size(bytes(relay.early[: preamble.HEADER_SIZE]))
            if not await relay.wait_for_bytes(size, PREAMBLE_TIMEOUT):
                return None
            header, used = preamble.decode_preamble(bytes(relay.early))
        except preamble.PreambleError as exc:
            log.debug("bad tunnel preamble from %s: %s", relay.downstream_socket, exc)
            return None
        relay.consume(used)
        if header.target_port in podplan.AGENT_PORTS:
            return None
        if header.flags & preamble.PreambleFlags.WANT_REPLY:
            assert relay.down.transport is not None
            relay.down.transport.write(preamble.encode_reply(preamble.ReplyCode.ACCEPTED))
        return str(ipaddress.ip_address(self.pod.ip)), header.target_port

    async def _route_dns(self, relay: Relay) -> Address | None:
        return (self._resolver, DNS_PORT) if self._resolver else None
