"""Router mode's server on loopback: an HTTP_PROXY client's requests (absolute-form, keep-alive,
CONNECT) carried to a Service's endpoint as the calling pod, and the answers for what it cannot
carry. Only the netns-bound socket factory is swapped for a plain socket; the caller pod is
127.0.0.2 (clients bind it), anything else is not a pod of the node."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dp_sinks import RecordingSink
from dp_tables import endpoint, pod, service, table

from nodeagent.observe.metrics import PodTcpStats
from nodeagent.pod import PodAddress
from nodeagent.proxy import outbound
from nodeagent.proxy import router as router_mod
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.listeners import ProxyRuntime
from nodeagent.proxy.router import NodeCaller, Router
from nodemesh import tasks

CALLER = "127.0.0.2"


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An origin server: answers each request with the request line it received."""
    while head := await reader.readuntil(b"\r\n\r\n"):
        line = head.split(b"\r\n", 1)[0]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))
        await writer.drain()
        if reader.at_eof():
            break


@contextlib.asynccontextmanager
async def _router_to(
    monkeypatch: pytest.MonkeyPatch, up: int
) -> AsyncIterator[tuple[int, RecordingSink, ProxyRuntime]]:
    """A router (its port, the sink, the runtime) to Service shop/api (10.96.0.10:80) whose one
    endpoint is 127.0.0.1:`up`; the caller pod web-1 is CALLER."""

    def plain_socket(netns: str, *, mark: int) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        return s

    monkeypatch.setattr(outbound, "marked_socket", plain_socket)
    sink = RecordingSink()
    executor = ThreadPoolExecutor(1)
    runtime = ProxyRuntime(
        mark=1,
        executor=executor,
        table=table(
            [service("api", "10.96.0.10", 80, [endpoint("127.0.0.1", up, meshed=False)])],
            [pod("web-1", CALLER)],
        ),
        sink=sink,
    )
    r = Router(
        runtime,
        host="127.0.0.1",
        port=0,
        node="node1",
        cluster_domain="cluster.local",
        listeners_of=lambda ip: None,
    )
    await r.start()
    assert r.sock is not None
    try:
        yield r.sock.getsockname()[1], sink, runtime
    finally:
        r.close()
        await asyncio.sleep(0.05)
        assert not runtime.relays, "relays left open"
        executor.shutdown()
        await tasks.cancel_all([])


async def _origin_server(port: int = 0) -> asyncio.Server:
    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _origin(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(origin, "127.0.0.1", port)


@pytest.fixture
async def router(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, RecordingSink]]:
    server = await _origin_server()
    async with _router_to(monkeypatch, server.sockets[0].getsockname()[1]) as (port, sink, _):
        yield port, sink
        server.close()


async def _open(
    port: int, source: str = CALLER
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(h.split(b":")[1])
        for h in head.split(b"\r\n")
        if h.lower().startswith(b"content-length")
    )
    return head.split(b"\r\n", 1)[0], await asyncio.wait_for(reader.readexactly(length), 10)


async def test_keep_alive_requests_reach_the_service_in_origin_form_as_the_caller(router) -> None:
    port, sink = router
    reader, writer = await _open(port)
    for path in ("/a", "/b?x=1"):
        writer.write(b"GET http://api.shop%s HTTP/1.1\r\nHost: api.shop\r\n\r\n" % path.encode())
        status, body = await _response(reader)
        assert (status, body) == (b"HTTP/1.1 200 OK", b"GET %s HTTP/1.1" % path.encode())
    writer.close()
    await asyncio.sleep(0.1)
    assert [(e.src.pod, e.dst.service) for e in sink.opened] == [("web-1", "api")]


async def test_connect_tunnels_the_bytes_after_a_200(router) -> None:
    port, _ = router
    reader, writer = await _open(port)
    writer.write(b"CONNECT api.shop.svc.cluster.local:80 HTTP/1.1\r\n\r\nGET /raw HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == (
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    )
    assert await _response(reader) == (b"HTTP/1.1 200 OK", b"GET /raw HTTP/1.1")
    writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "source", "status", "says"),
    [
        (b"GET /x HTTP/1.1\r\n\r\n", CALLER, b"400", b"not a proxy request"),
        (b"GET http://nope.shop/ HTTP/1.1\r\n\r\n", CALLER, b"502", b"unknown host 'nope.shop'"),
        (b"CONNECT api.shop:443 HTTP/1.1\r\n\r\n", CALLER, b"403", b"port 443 is not a TCP port"),
        (b"GET http://api.shop/ HTTP/1.1\r\n\r\n", "127.0.0.1", b"403",
         b"caller 127.0.0.1 is not a pod of node node1"),
    ],
)  # fmt: skip
async def test_what_cannot_be_carried_gets_an_answer_naming_why(
    router, request_bytes: bytes, source: str, status: bytes, says: bytes
) -> None:
    port, sink = router
    reader, writer = await _open(port, source)
    writer.write(request_bytes)
    answer = await asyncio.wait_for(reader.read(), 10)  # the router closes after answering
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert says in answer, answer
    writer.close()
    assert sink.opened == []  # nothing was carried


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def to_port(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[int, int, RecordingSink, ProxyRuntime]]:
    """A router (its port) to Service shop/api whose one endpoint's port (also given) has
    nothing listening yet, the sink and the runtime; a 2 s retry window."""
    monkeypatch.setattr(router_mod, "RETRY_WINDOW", 2.0)
    up = _free_port()
    async with _router_to(monkeypatch, up) as (port, sink, runtime):
        yield port, up, sink, runtime


async def test_a_dial_that_fails_is_tried_again_until_the_endpoint_is_back(to_port) -> None:
    """A peer agent or endpoint away for a moment (a rollout) costs the app a wait, not a 502."""
    port, up, sink, _ = to_port
    reader, writer = await _open(port)
    writer.write(b"GET http://api.shop/ok HTTP/1.1\r\nHost: api.shop\r\n\r\n")
    await asyncio.sleep(0.6)  # refused meanwhile, a few times
    server = await _origin_server(up)
    try:
        assert await _response(reader) == (b"HTTP/1.1 200 OK", b"GET /ok HTTP/1.1")
    finally:
        writer.close()
        server.close()
    await asyncio.sleep(0.1)
    assert [e.error for e in sink.closed if e.error] == []  # no failed connection counted


async def test_a_dial_failing_for_the_whole_window_is_a_502_logged_with_its_cause(
    to_port, caplog: pytest.LogCaptureFixture
) -> None:
    port, up, sink, _ = to_port
    reader, writer = await _open(port)
    writer.write(b"GET http://api.shop/ HTTP/1.1\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    # The destination and why, at warning level (a rollout's 502s must be explainable).
    assert f"answered 502: api.shop:80: 127.0.0.1:{up}: " in warned[0], warned
    assert "Connect call failed" in warned[0], warned
    assert len([e for e in sink.closed if e.error]) == 1  # counted once, not once a retry


async def test_error_answers_are_logged_at_a_bounded_rate(router, caplog) -> None:
    port, _ = router
    for _ in range(12):
        reader, writer = await _open(port)
        writer.write(b"GET http://nope.shop/ HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert 1 <= len(warned) <= 4, warned  # WARN_RATE a second (burst of 2), not 12
    assert all("unknown host 'nope.shop'" in w for w in warned), warned
    await asyncio.sleep(1.1)
    reader, writer = await _open(port)
    writer.write(b"GET http://nope.shop/ HTTP/1.1\r\n\r\n")
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    last = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][-1]
    assert f"({12 - len(warned)} more since the last one logged)" in last, last


async def test_a_router_service_routes_by_host_as_the_captured_caller(to_port) -> None:
    """A meshed pod's connection captured to a router Service's VIP: an origin-form request goes
    where its Host names, as that pod (what `curl -H 'Host: api.shop' http://router.infra/`
    sends); a later request of the connection naming another Host ends the connection."""
    port, up, sink, runtime = to_port
    server = await _origin_server(up)
    caller = NodeCaller(PodAddress("shop", "web-1", "unused", CALLER), runtime)

    def accepted() -> asyncio.Protocol:
        def start(relay: Relay) -> None:
            serve = router_mod.serve_host_routed(relay, caller, cluster_domain="cluster.local")  # type: ignore[arg-type]
            tasks.spawn(serve, name="test router service")

        return Relay(PodTcpStats("outbound", "", "test"), runtime.relays, start).down

    vip = await asyncio.get_running_loop().create_server(accepted, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", vip.sockets[0].getsockname()[1])
        writer.write(b"GET /by-host HTTP/1.1\r\nHost: api.shop\r\n\r\n")
        assert await _response(reader) == (b"HTTP/1.1 200 OK", b"GET /by-host HTTP/1.1")
        writer.write(b"GET /two HTTP/1.1\r\nHost: api.shop:80\r\n\r\n")
        assert await _response(reader) == (b"HTTP/1.1 200 OK", b"GET /two HTTP/1.1")
        writer.write(b"GET /elsewhere HTTP/1.1\r\nHost: other.shop\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing sent on
        writer.close()
    finally:
        vip.close()
        server.close()
    await asyncio.sleep(0.1)
    assert [(e.src.pod, e.dst.service) for e in sink.opened] == [("web-1", "api")]
