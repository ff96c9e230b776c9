"""The outbound handler on loopback: a VIP balanced over endpoints, retries past endpoints that
refuse, and the client's view when nothing answers. Only the two netns-bound calls are swapped
for loopback equivalents (the original destination, the socket factory)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast

import pytest
from dp_clients import ask as _ask
from dp_sinks import RecordingSink
from dp_tables import endpoint, pod, service, table

from nodeagent.pod import PodAddress
from nodeagent.protocol.detect import ServerFirstMemory
from nodeagent.proxy import outbound
from nodeagent.proxy.listeners import PodListeners, ProxyRuntime
from nodemesh import tasks

VIP = ("10.96.0.10", 80)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    port = writer.get_extra_info("sockname")[1]
    data = await reader.read()
    writer.write(f"{port}:".encode() + data)
    await writer.drain()
    writer.close()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, object]]:
    monkeypatch.setattr(outbound, "original_destination", lambda sock: VIP)

    def plain_socket(netns: str, *, mark: int) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        return s

    monkeypatch.setattr(outbound, "marked_socket", plain_socket)
    servers = [await asyncio.start_server(_answer, "127.0.0.1", 0) for _ in range(2)]
    live = [s.sockets[0].getsockname()[1] for s in servers]
    dead = _free_port()  # nothing listens: connections are refused
    state: dict[str, object] = {"live": live, "dead": dead}
    sink = RecordingSink()
    executor = ThreadPoolExecutor(1)
    eps = [endpoint("127.0.0.1", p, meshed=False) for p in (dead, *live)]
    runtime = ProxyRuntime(
        mark=1,
        executor=executor,
        table=table([service("api", *VIP, eps)], [pod("web-1", "127.0.0.1")]),
        sink=sink,
    )
    listeners = PodListeners(PodAddress("shop", "web-1", "/nonexistent", "127.0.0.1"), runtime)
    loop = asyncio.get_running_loop()
    front = await loop.create_server(
        listeners._factory(outbound.handle, listeners.outbound), "127.0.0.1", 0
    )
    state.update(
        port=front.sockets[0].getsockname()[1], runtime=runtime, sink=sink, servers=servers
    )
    yield state
    front.close()
    for s in servers:
        s.close()
    await asyncio.sleep(0.05)
    assert not runtime.relays, "relays left open"
    executor.shutdown()
    await tasks.cancel_all([])


async def test_every_connection_succeeds_and_the_refusing_endpoint_is_set_aside(proxy) -> None:
    answers = [await _ask(proxy["port"], b"q") for _ in range(30)]
    served = {int(a.split(b":")[0]) for a in answers}
    assert served == set(proxy["live"])  # type: ignore[arg-type]
    runtime: ProxyRuntime = proxy["runtime"]  # type: ignore[assignment]
    dead = runtime.balancer.loads[("127.0.0.1", proxy["dead"])]
    # Refused once (maybe twice by chance before it was marked down), then left alone.
    assert 1 <= dead.failures <= 2 and dead.down_until > 0
    sink: RecordingSink = proxy["sink"]  # type: ignore[assignment]
    assert len(sink.closed) == 30 and all(c.error == "" for c in sink.closed)
    assert {c.dst.service for c in sink.closed} == {"api"}
    assert all(load.outstanding == 0 for load in runtime.balancer.loads.values())


async def test_the_client_is_reset_only_when_every_endpoint_failed(proxy) -> None:
    for s in proxy["servers"]:  # type: ignore[attr-defined]
        s.close()
        await s.wait_closed()
    assert await _ask(proxy["port"], b"q") == b"<reset>"
    sink: RecordingSink = proxy["sink"]  # type: ignore[assignment]
    (closed,) = sink.closed
    assert "[Errno 111]" in closed.error  # ECONNREFUSED, from the last endpoint tried
    runtime: ProxyRuntime = proxy["runtime"]  # type: ignore[assignment]
    assert sum(load.failures for load in runtime.balancer.loads.values()) == 3


async def test_a_service_with_no_ready_endpoint_resets_at_once(proxy) -> None:
    runtime: ProxyRuntime = proxy["runtime"]  # type: ignore[assignment]
    runtime.table = table([service("api", *VIP, [])])
    runtime.routes.table = runtime.table
    assert await _ask(proxy["port"], b"q") == b"<reset>"
    sink: RecordingSink = proxy["sink"]  # type: ignore[assignment]
    assert sink.closed[0].error == "shop/api has no ready endpoint"


def test_observation_is_offered_only_where_this_agent_parses() -> None:
    """Observe once: the offer says "my tap reports the requests for you", so it is made only
    where the tap will parse them."""
    memory = ServerFirstMemory(ttl=600.0)
    rt = cast(Any, SimpleNamespace(observe_once=True, server_first=memory))
    web = cast(Any, SimpleNamespace(opaque=False, ip="10.96.0.20", port=80))
    assert outbound.offers_observation(rt, web, now=100.0)
    off = cast(Any, SimpleNamespace(observe_once=False, server_first=memory))
    assert not outbound.offers_observation(off, web, now=100.0)
    opaque = cast(Any, SimpleNamespace(opaque=True, ip="10.96.0.20", port=80))
    assert not outbound.offers_observation(rt, opaque, now=100.0)
    # A destination remembered as speaking first is relayed opaque by our tap.
    memory.remember("10.96.0.20", 80, now=100.0)
    assert not outbound.offers_observation(rt, web, now=101.0)
    other_port = cast(Any, SimpleNamespace(opaque=False, ip="10.96.0.20", port=81))
    assert outbound.offers_observation(rt, other_port, now=101.0)
    assert outbound.offers_observation(rt, web, now=701.0)  # forgotten: parsed again
