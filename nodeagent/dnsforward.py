"""DNS on port 4153 inside a pod: every query forwarded unchanged to the pod's upstream resolver.

Queries leave from a marked socket inside the pod's netns, so the resolver sees the pod and the
pod's rules do not capture them again. (The data plane will answer *.svc names from the table.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from nodeagent.metrics import DNS_QUERIES
from nodeagent.podnetns import marked_socket
from nodemesh import tasks

log = logging.getLogger(__name__)

DNS_PORT = 53
QUERY_TIMEOUT = 5.0
MAX_INFLIGHT = 64
MAX_UDP = 65535


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


class UdpDnsForwarder(asyncio.DatagramProtocol):
    """Serves one pod's 127.0.0.1:4153/udp; one marked upstream socket per query."""

    def __init__(
        self,
        *,
        netns: str,
        namespace: str,
        pod: str,
        upstream: Callable[[], str | None],
        mark: int,
        executor: Executor,
    ) -> None:
        self.netns = netns
        self.namespace = namespace
        self.pod = pod
        self.upstream = upstream
        self.mark = mark
        self.executor = executor
        self.transport: asyncio.DatagramTransport | None = None
        self.inflight: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport implements DatagramTransport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(self.inflight) >= MAX_INFLIGHT:
            # Dropping is what a busy resolver does; the client retries.
            DNS_QUERIES.labels(self.namespace, self.pod, "udp", "dropped").inc()
            return
        task = tasks.spawn(self._forward(data, addr), name=f"dns {self.namespace}/{self.pod}")
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def _forward(self, query: bytes, client: tuple[str, int]) -> None:
        server = self.upstream()
        result = "error"
        loop = asyncio.get_running_loop()
        try:
            if server is None:
                result = "no-upstream"
                return
            sock = await loop.run_in_executor(
                self.executor,
                lambda: marked_socket(self.netns, mark=self.mark, kind=socket.SOCK_DGRAM),
            )
            with sock:
                await loop.sock_connect(sock, (server, DNS_PORT))
                await loop.sock_sendall(sock, query)
                reply = await asyncio.wait_for(loop.sock_recv(sock, MAX_UDP), QUERY_TIMEOUT)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.sendto(reply, client)
            result = "ok"
        except TimeoutError:
            result = "timeout"
        except OSError as exc:
            log.debug("dns forward for %s/%s failed: %s", self.namespace, self.pod, exc)
        finally:
            DNS_QUERIES.labels(self.namespace, self.pod, "udp", result).inc()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        for task in list(self.inflight):
            task.cancel()
