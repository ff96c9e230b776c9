"""outbound.handle hands routed HTTP to the L7 path (loopback; only the netns-bound calls are
swapped): one keep-alive connection's requests spread over the endpoints, and a WebSocket
handshake stays on the relay, which turns the connection opaque after it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dp_sinks import RecordingSink
from dp_tables import endpoint, pod, service, table

from nodeagent.pod import PodAddress
from nodeagent.proxy import outbound
from nodeagent.proxy.listeners import PodListeners, ProxyRuntime
from nodemesh import tasks
from nodemesh.routing.spec import compile_route

VIP = ("10.96.0.10", 80)
ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "api", "namespace": "shop"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
        "rules": [{"timeouts": {"request": "5s"}}],
    },
}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 keep-alive answering its own port; a WebSocket upgrade becomes an echo."""
    port = writer.get_extra_info("sockname")[1]
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"upgrade: websocket" in head.lower():
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")  # fmt: skip
                while data := await reader.read(1024):
                    writer.write(data)
                return
            body = str(port).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, object]]:
    monkeypatch.setattr(outbound, "original_destination", lambda sock: VIP)

    def plain_socket(netns: str, *args: object, **kw: object) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        return s

    monkeypatch.setattr(outbound, "marked_socket", plain_socket)
    servers = [await asyncio.start_server(_serve, "127.0.0.1", 0) for _ in range(2)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    executor = ThreadPoolExecutor(1)
    eps = [endpoint("127.0.0.1", p, meshed=False) for p in ports]
    runtime = ProxyRuntime(
        mark=1,
        executor=executor,
        table=table([service("api", *VIP, eps)], [pod("web-1", "127.0.0.1")]),
        sink=RecordingSink(),
    )
    runtime.table.routes.replace([compile_route(ROUTE)])
    listeners = PodListeners(PodAddress("shop", "web-1", "/nonexistent", "127.0.0.1"), runtime)
    front = await asyncio.get_running_loop().create_server(
        listeners._factory(outbound.handle, listeners.outbound), "127.0.0.1", 0
    )
    yield {"port": front.sockets[0].getsockname()[1], "ports": ports, "runtime": runtime}
    front.close()
    listeners.close()
    for s in servers:
        s.close()
    await asyncio.sleep(0.1)
    executor.shutdown()
    await tasks.cancel_all([])


async def test_one_keep_alive_connection_is_balanced_per_request(proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy["port"])
    answers = set()
    for _ in range(40):
        writer.write(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.add(int(await reader.readexactly(size)))
    writer.close()
    # The relay would have pinned the connection to one endpoint.
    assert answers == set(proxy["ports"])
    # Dialled straight (outbound.dial_upstream), each endpoint's pooled connection observed
    # once as the client pod's outbound TCP connection to it.
    sink = proxy["runtime"].sink
    ups = [e for e in sink.opened if e.direction == "outbound" and e.protocol == "http1"]
    assert sorted(e.dst.ip for e in ups) == ["127.0.0.1", "127.0.0.1"], ups


async def test_a_websocket_handshake_stays_on_the_relay(proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy["port"])
    writer.write(
        b"GET /ws HTTP/1.1\r\nhost: api\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(b"frames after the handshake")
    assert await asyncio.wait_for(reader.readexactly(26), 5) == b"frames after the handshake"
    writer.close()
