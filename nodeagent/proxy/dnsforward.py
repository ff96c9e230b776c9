"""DNS on port 4153 inside a pod, UDP and TCP: Service names answered from the agent's table
(nodeagent.proxy.dnsnames), every other query forwarded unchanged to the pod's upstream resolver.

Forwarded queries leave from a marked socket inside the pod's netns, so the resolver sees the
pod and the pod's rules do not capture them again. Queries are counted in
`nodemesh_agent_dns_queries_total{namespace, pod, protocol, result}` with result one of
answered, nxdomain, nodata (from the table), ok (forwarded and answered), timeout, error,
no-upstream, dropped (too many in flight).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from nodeagent.observe.metrics import DNS_QUERIES
from nodeagent.protocol import dns
from nodeagent.proxy.dnsnames import DnsNames
from nodeagent.proxy.podnetns import marked_socket
from nodemesh import tasks
from nodemesh.netns import NetnsHandle

log = logging.getLogger(__name__)

DNS_PORT = 53
QUERY_TIMEOUT = 5.0
MAX_INFLIGHT = 64
MAX_UDP = 65535
TCP_IDLE_TIMEOUT = 10.0


def first_nameserver(text: str) -> str | None:
    """The first IPv4 `nameserver` of a resolv.conf."""
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and words[1].count(".") == 3:
            return words[1]
    return None


def upstream_resolver(netns: str) -> str | None:
    """The pod's resolver: /etc/netns/<name>/resolv.conf (as `ip netns exec` shows it to the
    pod's processes), else the agent's own /etc/resolv.conf."""
    for path in (Path("/etc/netns") / Path(netns).name / "resolv.conf", Path("/etc/resolv.conf")):
        try:
            found = first_nameserver(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if found:
            return found
    return None


class PodResolver:
    """One pod's DNS: decides from the table or asks the upstream, for either transport."""

    def __init__(
        self,
        *,
        netns: str | NetnsHandle,
        namespace: str,
        pod: str,
        upstream: Callable[[], str | None],
        mark: int,
        executor: Executor,
        names: DnsNames | None = None,
    ) -> None:
        self.netns = netns
        self.namespace = namespace
        self.pod = pod
        self.upstream = upstream
        self.mark = mark
        self.executor = executor
        self.names = names

    def count(self, protocol: str, result: str) -> None:
        DNS_QUERIES.labels(self.namespace, self.pod, protocol, result).inc()

    async def resolve(self, query: bytes, protocol: str) -> bytes | None:
        """The reply to `query` (None: no answer to give), counted under `protocol`."""
        if self.names is not None:
            decision = self.names.decide(query, namespace=self.namespace)
            if decision.reply is not None:
                self.count(protocol, decision.result)
                return decision.reply
        return await self.forward(query, protocol)

    async def forward(self, query: bytes, protocol: str) -> bytes | None:
        """The upstream resolver's reply to `query`, or None (timeout, error: counted)."""
        result = "error"
        try:
            server = self.upstream()
            if server is None:
                result = "no-upstream"
                return None
            reply = await asyncio.wait_for(self._ask(server, query, protocol), QUERY_TIMEOUT)
            result = "ok"
            return reply
        except TimeoutError:
            result = "timeout"
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("dns forward for %s/%s failed: %s", self.namespace, self.pod, exc)
        finally:
            self.count(protocol, result)
        return None

    async def _ask(self, server: str, query: bytes, protocol: str) -> bytes:
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        sock = await loop.run_in_executor(
            self.executor, lambda: marked_socket(self.netns, mark=self.mark, kind=kind)
        )
        with sock:
            await loop.sock_connect(sock, (server, DNS_PORT))
            if protocol == "udp":
                await loop.sock_sendall(sock, query)
                return await loop.sock_recv(sock, MAX_UDP)
            await loop.sock_sendall(sock, len(query).to_bytes(2, "big") + query)
            size = int.from_bytes(await _recv_exactly(loop, sock, 2), "big")
            return await _recv_exactly(loop, sock, size)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise asyncio.IncompleteReadError(data, n)
        data += chunk
    return data


class UdpDnsForwarder(asyncio.DatagramProtocol):
    """Serves one pod's 127.0.0.1:4153/udp."""

    def __init__(
        self,
        *,
        netns: str | NetnsHandle,
        namespace: str,
        pod: str,
        upstream: Callable[[], str | None],
        mark: int,
        executor: Executor,
        names: DnsNames | None = None,
    ) -> None:
        self.namespace = namespace
        self.pod = pod
        self.resolver = PodResolver(
            netns=netns,
            namespace=namespace,
            pod=pod,
            upstream=upstream,
            mark=mark,
            executor=executor,
            names=names,
        )
        self.transport: asyncio.DatagramTransport | None = None
        self.inflight: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport implements DatagramTransport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        names = self.resolver.names
        if names is not None:
            # Table answers need no I/O: reply at once, no task.
            decision = names.decide(data, namespace=self.namespace)
            if decision.reply is not None:
                self.resolver.count("udp", decision.result)
                if self.transport is not None:
                    self.transport.sendto(decision.reply, addr)
                return
        if len(self.inflight) >= MAX_INFLIGHT:
            # Dropping is what a busy resolver does; the client retries.
            self.resolver.count("udp", "dropped")
            return
        task = tasks.spawn(self._forward(data, addr), name=f"dns {self.namespace}/{self.pod}")
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _forward(self, query: bytes, client: tuple[str, int]) -> None:
        reply = await self.resolver.forward(query, "udp")
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, client)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in list(self.inflight):
            task.cancel()


async def serve_tcp(
    resolver: PodResolver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One DNS-over-TCP client: length-prefixed queries answered in order until it goes."""
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            query = await asyncio.wait_for(
                reader.readexactly(int.from_bytes(head, "big")), QUERY_TIMEOUT
            )
            reply = await resolver.resolve(query, "tcp")
            if reply is None:
                return  # closing is how a TCP resolver says it has nothing
            writer.write(dns.frame_tcp(reply))
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError) as exc:
        log.debug("dns tcp for %s/%s: %s", resolver.namespace, resolver.pod, exc)
    finally:
        writer.close()
