"""Relayed HTTP/2 connections told to go away when their Service changes (nodeagent.proxy.h2drain),
on loopback with the agent's real relay, tap, routes and table, and real peers.

- grpcio: one channel, 200 ms calls back to back, through a relay pinned to server `a` (a
  separate process that ignores SIGTERM). The table replaces `a` by `b`; then `a` is SIGKILLed
  (no GOAWAY of its own). No call fails, and the calls after the kill are all answered by `b`.
- A raw HTTP/2 client that never closes a connection by itself, its call in flight when the
  Service changes: when the Service grew the GOAWAY waits for the first quiet moment (after the
  answer); when the endpoint left and that wait is over it goes at once, before the answer,
  which still comes whole. Either way the agent then closes the connection.
- A connection whose Service did not change in a way that matters is left alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import pytest

from nodeagent.observe import peers
from nodeagent.observe.events import NullSink
from nodeagent.observe.metrics import PodTcpStats
from nodeagent.protocol.http2_frames import ACK, DATA, END_STREAM, GOAWAY, HEADERS, SETTINGS
from nodeagent.proxy import h2drain
from nodeagent.proxy.h2drain import PinnedRelays
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.l7relay import ConnectionTap
from nodeagent.proxy.routing import Routes
from nodeagent.upstream.table import DestinationTable
from nodemesh import destination_codec as codec
from nodemesh import tasks
from nodemesh.api import destination_pb2 as pb
from tests.unit.agent.dp_tables import endpoint, service, table

grpc = pytest.importorskip("grpc")

STATS = PodTcpStats("outbound", "dp-test", "h2drain")
APPS = Path(__file__).resolve().parents[3] / "integration" / "h2drain_lab_apps.py"
VIP, PORT = "10.96.7.7", 8080


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(name: str) -> tuple[subprocess.Popen[bytes], int]:
    """The lab test's gRPC server (ignores SIGTERM) as a process of its own, once it accepts."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(APPS), "server", str(port)], env={**os.environ, "POD_NAME": name}
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.05)  # a process's listener: nothing to wait on but a connect


class Agent:
    """The outbound side of an agent on loopback: route by the table, relay, tap, watch."""

    def __init__(self, t: DestinationTable) -> None:
        self.table = t
        self.routes = Routes(t)
        self.pinned = PinnedRelays()
        self.relays: set[Relay] = set()
        self.dialled: list[tuple[str, int]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()

        async def run(relay: Relay) -> None:
            route = self.routes.resolve(VIP, PORT)
            target = route.targets[0]
            self.dialled.append(target.key)
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, target.key)
            await relay.open_upstream(sock)
            tap = ConnectionTap(
                sink=NullSink(), conn_id=len(self.dialled), direction="outbound",
                src=peers.peer("127.0.0.1"), dst=peers.peer(target.ip), tls=False,
                dst_key=(VIP, PORT), call_later=loop.call_later,
            )  # fmt: skip
            self.pinned.watch(relay, route, target, tap)
            relay.start(tap)

        def begin(relay: Relay) -> None:
            tasks.spawn(run(relay), name="test relay")

        self.server = await loop.create_server(
            lambda: Relay(STATS, self.relays, begin).down, "127.0.0.1", 0
        )
        return int(self.server.sockets[0].getsockname()[1])

    def endpoints(self, *eps: tuple[str, int]) -> int:
        """A table update: the Service's ready endpoints are now `eps`; connections told."""
        svc = service("api", VIP, PORT, [endpoint(ip, port) for ip, port in eps])
        delta = pb.Delta(services_updated=[codec.service_to_pb(svc)])
        change = self.table.apply(pb.Update(revision=self.table.revision + 1, delta=delta))
        assert change is not None
        return self.pinned.services_changed(
            change.services,
            routes=self.routes,
            route_table=self.table.routes,
            call_later=asyncio.get_running_loop().call_later,
        )

    async def in_flight(self) -> None:
        """Until a relayed connection has a stream in flight, as its tap sees it."""

        def streams() -> int:
            held = [p for by_relay in self.pinned.by_service.values() for p in by_relay.values()]
            return sum(len(getattr(p.tap.observer, "streams", ())) for p in held)

        deadline = time.monotonic() + 10
        while not streams():
            assert time.monotonic() < deadline, "no stream in flight"
            await asyncio.sleep(0.01)  # the tap's state, polled: it has no event to wait on

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for relay in list(self.relays):
            relay.abort()


@pytest.fixture
def servers() -> Iterator[dict[str, tuple[subprocess.Popen[bytes], int]]]:
    started = {name: _server(name) for name in ("a", "b")}
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
async def agent_for() -> AsyncIterator[list[Agent]]:
    made: list[Agent] = []
    yield made
    for agent in made:
        agent.close()


class Calls:
    """One grpcio channel calling /test.Who/Slow back to back on a thread of its own."""

    def __init__(self, port: int) -> None:
        self.results: list[str] = []
        self.stop = threading.Event()
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self.thread.start()

    def _run(self, port: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Who/Slow")
            while not self.stop.is_set():
                try:
                    out = call(b"", timeout=10).decode()
                except grpc.RpcError as exc:
                    out = f"FAILED {exc.code().name}: {exc.details()}"
                with self.changed:
                    self.results.append(out)
                    self.changed.notify_all()

    async def until(self, count: int) -> list[str]:
        def wait() -> None:
            with self.changed:
                assert self.changed.wait_for(lambda: len(self.results) >= count, timeout=30)

        await asyncio.to_thread(wait)
        return list(self.results)

    async def end(self) -> list[str]:
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 30)
        return list(self.results)


async def test_grpc_channel_loses_no_call_when_its_only_endpoint_is_replaced(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]], agent_for: list[Agent]
) -> None:
    (proc_a, port_a), (_, port_b) = servers["a"], servers["b"]
    agent = Agent(table([service("api", VIP, PORT, [endpoint("127.0.0.1", port_a)])]))
    agent_for.append(agent)
    calls = Calls(await agent.start())
    try:
        assert await calls.until(5) == ["a"] * 5
        assert agent.endpoints(("127.0.0.1", port_b)) == 1  # a left, b came: a rollout
        await calls.until(len(calls.results) + 3)
        proc_a.send_signal(signal.SIGTERM)  # ignored, as by the lab test's pods
        proc_a.kill()
        await asyncio.to_thread(proc_a.wait)
        killed_at = len(calls.results)
        await calls.until(killed_at + 5)
    finally:
        results = await calls.end()
    assert not [r for r in results if r.startswith("FAILED")], results
    assert set(results[killed_at:]) == {"b"}, results
    assert agent.dialled == [("127.0.0.1", port_a), ("127.0.0.1", port_b)]


class RawClient:
    """An HTTP/2 client that never closes the connection itself and, as RFC 9113 section 6.8
    says, goes on reading the streams a GOAWAY leaves open (python-hyper's h2 does not: its
    connection state machine refuses every frame after a GOAWAY, so it only writes here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.frames: list[tuple[int, int, int, bytes]] = []  # (type, flags, stream, payload)
        self.buf = b""

    async def request(self) -> None:
        self.conn.send_headers(
            1,
            [(":method", "POST"), (":scheme", "http"), (":authority", "api"),
             (":path", "/test.Who/Slow"), ("content-type", "application/grpc"),
             ("te", "trailers")],
        )  # fmt: skip
        self.conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def read_until(self, ftype: int, flags: int = 0, timeout: float = 10) -> bool:
        """Frames until one of `ftype` with `flags` set (True) or the connection's end."""
        while not any(f[0] == ftype and f[1] & flags == flags for f in self.frames):
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return False
            self.buf += data
            while len(self.buf) >= 9 and len(self.buf) >= 9 + int.from_bytes(self.buf[:3]):
                n = int.from_bytes(self.buf[:3], "big")
                head, payload, self.buf = self.buf[:9], self.buf[9 : 9 + n], self.buf[9 + n :]
                sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                self.frames.append((head[3], head[4], sid, payload))
                if head[3] == SETTINGS and not head[4] & ACK:
                    self.writer.write(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # its ACK
        return True


async def _raw_call(agent: Agent, change: Callable[[], int]) -> RawClient:
    """A raw client's call (200 ms) with `change` made while it is in flight; the client once
    its stream has ended."""
    client = RawClient(*await asyncio.open_connection("127.0.0.1", await agent.start()))
    await client.request()
    assert await client.read_until(SETTINGS)  # the server's: the call is in flight
    assert change() == 1
    assert await client.read_until(HEADERS, END_STREAM)  # the trailers
    body = b"".join(f[3] for f in client.frames if f[0] == DATA and f[2] == 1)
    assert body.endswith(b"a")  # the answer of the pod it was pinned to, whole
    return client


async def test_goaway_waits_for_the_call_in_flight_when_the_service_grows(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]],
    agent_for: list[Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h2drain, "CLOSE_CHECK_S", 0.2)
    (_, port_a), (_, port_b) = servers["a"], servers["b"]
    agent = Agent(table([service("api", VIP, PORT, [endpoint("127.0.0.1", port_a)])]))
    agent_for.append(agent)
    both = (("127.0.0.1", port_a), ("127.0.0.1", port_b))
    client = await _raw_call(agent, lambda: agent.endpoints(*both))
    try:
        # Nothing was urgent: the GOAWAY came in the first quiet moment, after the answer.
        assert await client.read_until(GOAWAY, timeout=5)
        kinds = [f[0] for f in client.frames]
        assert kinds[-1] == GOAWAY and kinds[-2] == HEADERS, kinds
        assert client.frames[-1][3] == struct.pack(">LL", (1 << 31) - 1, 0)
        # Nothing in flight any more: the agent closes the connection.
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
    finally:
        client.writer.close()


async def test_goaway_goes_before_the_answer_once_the_quiet_moment_is_overdue(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]],
    agent_for: list[Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(h2drain, "CLOSE_CHECK_S", 0.2)
    monkeypatch.setattr(h2drain, "LEFT_IDLE_WAIT_S", 0.0)
    (_, port_a), (_, port_b) = servers["a"], servers["b"]
    agent = Agent(table([service("api", VIP, PORT, [endpoint("127.0.0.1", port_a)])]))
    agent_for.append(agent)
    client = await _raw_call(agent, lambda: agent.endpoints(("127.0.0.1", port_b)))
    try:
        kinds = [f[0] for f in client.frames]
        goaways = [f[3] for f in client.frames if f[0] == GOAWAY]
        assert goaways == [struct.pack(">LL", (1 << 31) - 1, 0)]
        assert kinds.index(GOAWAY) < kinds.index(DATA), kinds  # before the answer, which came
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
    finally:
        client.writer.close()


async def test_a_connection_whose_endpoint_stays_alone_is_left_alone(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]], agent_for: list[Agent]
) -> None:
    (_, port_a), (_, port_b) = servers["a"], servers["b"]
    agent = Agent(table([service("api", VIP, PORT, [endpoint("127.0.0.1", port_a)])]))
    agent_for.append(agent)
    calls = Calls(await agent.start())
    try:
        await calls.until(2)
        # A change that leaves a the only ready endpoint (b not ready): nothing to move to.
        svc = service(
            "api",
            VIP,
            PORT,
            [endpoint("127.0.0.1", port_a), endpoint("127.0.0.2", port_b, ready=False)],
        )
        delta = pb.Delta(services_updated=[codec.service_to_pb(svc)])
        change = agent.table.apply(pb.Update(revision=2, delta=delta))
        assert change is not None and change.services
        told = agent.pinned.services_changed(
            change.services,
            routes=agent.routes,
            route_table=agent.table.routes,
            call_later=asyncio.get_running_loop().call_later,
        )
        assert told == 0
        await calls.until(len(calls.results) + 3)
    finally:
        results = await calls.end()
    assert set(results) == {"a"} and len(agent.dialled) == 1, (results, agent.dialled)


async def test_httpx_loses_no_request_in_flight_when_its_endpoint_is_replaced(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]], agent_for: list[Agent]
) -> None:
    """httpx's HTTP/2 (httpcore on python-hyper's h2) fails every request in flight at any
    GOAWAY, graceful or not (RemoteProtocolError: ConnectionTerminated, as it did when the GOAWAY
    went at once): the GOAWAY waits for the quiet moment after the answer."""
    httpx = pytest.importorskip("httpx")
    (_, port_a), (_, port_b) = servers["a"], servers["b"]
    agent = Agent(table([service("api", VIP, PORT, [endpoint("127.0.0.1", port_a)])]))
    agent_for.append(agent)
    url = f"http://127.0.0.1:{await agent.start()}/test.Who/Slow"
    headers = {"content-type": "application/grpc", "te": "trailers"}
    grpc_call = {"content": b"\x00" * 5, "headers": headers}
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        first = await client.post(url, **grpc_call)
        in_flight = asyncio.ensure_future(client.post(url, **grpc_call))
        await agent.in_flight()  # its answer takes 200 ms
        assert agent.endpoints(("127.0.0.1", port_b)) == 1
        answered = await in_flight
        after = await client.post(url, **grpc_call)
    assert [r.content[-1:] for r in (first, answered, after)] == [b"a", b"a", b"b"]
    assert agent.dialled == [("127.0.0.1", port_a), ("127.0.0.1", port_b)]


@pytest.mark.parametrize(
    ("endpoints", "routed", "why"),
    [
        ([("10.0.0.1", 80)], False, ""),  # still its only endpoint
        ([("10.0.0.2", 80)], False, h2drain.LEFT),  # replaced (a rollout)
        ([], False, h2drain.LEFT),  # gone, none left
        ([("10.0.0.1", 80), ("10.0.0.2", 80)], False, h2drain.GREW),  # scaled up
        ([("10.0.0.1", 80)], True, h2drain.GREW),  # a route attached since
    ],
)
def test_why_a_pinned_connection_moves(
    endpoints: list[tuple[str, int]], routed: bool, why: str
) -> None:
    t = table([service("api", VIP, PORT, [endpoint(ip, port) for ip, port in endpoints])])
    route = Routes(t).resolve(VIP, PORT)
    assert h2drain.why_move(("10.0.0.1", 80), route, routed=routed) == why
