"""The mesh tunnel on loopback: two relays (source and destination agent) with the real TLS
layer, workload certificates, preamble and reply, in front of an echo app."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import ip_address

import pytest
from dp_identities import API, TD, WEB, issue

from controlplane.identity import CertificateAuthority
from nodeagent.observe.metrics import PodTcpStats
from nodeagent.protocol import preamble as pre
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.routing import Target
from nodeagent.proxy.tunnel import TunnelDenied, TunnelRefused, accept_tunnel, open_tunnel, reply
from nodeagent.upstream.certstore import CertStore, Held
from nodemesh import tasks
from nodemesh.identity import CaMaterial

STATS = PodTcpStats("outbound", "dp-test", "tunnel")
OTHER = f"spiffe://{TD}/ns/shop/sa/other"


def _plain_socket() -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    return s


Handler = Callable[[Relay], Awaitable[None]]


@dataclass
class Agent:
    """A listener whose accepted connections go through `handler`, as in PodListeners."""

    handler: Handler
    server: asyncio.Server | None = None
    relays: set[Relay] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()

        def begin(relay: Relay) -> None:
            tasks.spawn(self._run(relay), name="test relay")

        self.server = await loop.create_server(
            lambda: Relay(STATS, self.relays, begin).down, "127.0.0.1", 0
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def _run(self, relay: Relay) -> None:
        try:
            await self.handler(relay)
        except Exception as exc:
            self.errors.append(exc)
            relay.refuse(str(exc))

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for r in list(self.relays):
            r.abort()


@dataclass
class World:
    src: Held
    dst: Held
    app_port: int
    dst_port: int = 0
    expect: str = API
    deny: bool = False
    seen_clients: list[str] = field(default_factory=list)
    resumed: list[bool] = field(default_factory=list)
    # Observe once: what the source offers, what the destination answers, what came of it.
    observe: bool = False
    reply_flags: pre.ReplyFlags = pre.ReplyFlags.NONE
    offered: list[bool] = field(default_factory=list)
    observed: list[bool] = field(default_factory=list)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Reads to EOF before answering: only a half-close that crossed the tunnel ends this.
    data = await reader.read()
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


@pytest.fixture
async def world(anchor: CaMaterial, authority: CertificateAuthority) -> AsyncIterator[World]:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    store.want({WEB, API})
    src = store.install(issue(authority, WEB))
    dst = store.install(issue(authority, API))
    app = await asyncio.start_server(_echo, "127.0.0.1", 0)
    w = World(src=src, dst=dst, app_port=app.sockets[0].getsockname()[1])
    loop = asyncio.get_running_loop()

    async def destination(relay: Relay) -> None:
        client_id, header = await accept_tunnel(relay, held=w.dst)
        w.seen_clients.append(client_id)
        w.offered.append(bool(header.flags & pre.PreambleFlags.SOURCE_OBSERVES))
        if w.deny:
            reply(relay, pre.ReplyCode.POLICY_DENIED)
            relay.decline("denied")
            return
        sock = _plain_socket()
        await loop.sock_connect(sock, ("127.0.0.1", header.target_port))
        await relay.open_upstream(sock)
        reply(relay, pre.ReplyCode.ACCEPTED, w.reply_flags)
        relay.start()

    async def source(relay: Relay) -> None:
        sock = _plain_socket()
        await loop.sock_connect(sock, ("127.0.0.1", w.dst_port))
        target = Target("127.0.0.1", w.app_port, meshed=True, identity=w.expect)
        resumed = await open_tunnel(
            relay,
            sock,
            held=w.src,
            target=target,
            source_namespace="shop",
            source_pod="web-1",
            resume=store.resume,
            observe=w.observe,
        )
        w.resumed.append(resumed)
        w.observed.append(relay.observes_for_peer)
        relay.start()

    w.dst_agent = Agent(destination)  # type: ignore[attr-defined]
    w.src_agent = Agent(source)  # type: ignore[attr-defined]
    w.dst_port = await w.dst_agent.start()  # type: ignore[attr-defined]
    w.src_port = await w.src_agent.start()  # type: ignore[attr-defined]
    yield w
    w.src_agent.close()  # type: ignore[attr-defined]
    w.dst_agent.close()  # type: ignore[attr-defined]
    app.close()
    await asyncio.sleep(0.05)


RESET = b"<reset>"


async def _request(port: int, payload: bytes) -> bytes:
    """What the app's client gets back; RESET when the agent refused it, as a closed port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return RESET
    finally:
        writer.close()


async def test_bytes_and_half_close_cross_the_tunnel_and_sessions_resume(world: World) -> None:
    payload = b"hello through the tunnel" * 1000
    assert await _request(world.src_port, payload) == b"echo:" + payload
    assert world.seen_clients == [WEB]  # the destination saw the source's certificate
    assert await _request(world.src_port, b"again") == b"echo:again"
    assert world.resumed == [False, True]
    assert world.seen_clients == [WEB, WEB]  # the resumed session still proves the client


async def test_a_server_proving_another_identity_is_refused(world: World) -> None:
    world.expect = OTHER
    assert await _request(world.src_port, b"x") == RESET
    assert isinstance(world.src_agent.errors[0], TunnelRefused)  # type: ignore[attr-defined]
    assert "expected" in str(world.src_agent.errors[0])  # type: ignore[attr-defined]


async def test_policy_denial_is_final(world: World) -> None:
    world.deny = True
    assert await _request(world.src_port, b"x") == RESET
    assert isinstance(world.src_agent.errors[0], TunnelDenied)  # type: ignore[attr-defined]


async def test_a_client_certificate_from_another_ca_is_refused(
    world: World, foreign_authority: CertificateAuthority, anchor: CaMaterial
) -> None:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    store.want({WEB})
    world.src = store.install(issue(foreign_authority, WEB))
    assert await _request(world.src_port, b"x") == RESET
    assert world.seen_clients == []
    err = world.dst_agent.errors[0]  # type: ignore[attr-defined]
    assert isinstance(err, ssl.SSLError) and "certificate" in str(err).lower(), err


async def test_a_client_without_a_certificate_is_refused(world: World, anchor: CaMaterial) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=anchor.certificate_pem().decode())
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", world.dst_port, ssl=ctx, server_hostname="api.shop.identity.nodemesh"
    )
    # TLS 1.3: the server's verdict on the (missing) client certificate arrives as an alert.
    writer.write(pre.encode_preamble(pre.Preamble(world.app_port, ip_address("127.0.0.1"))))
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        data = await asyncio.wait_for(reader.read(), 5)
        if not data:
            raise ConnectionError("closed")
    writer.close()
    assert world.seen_clients == []
    assert "certificate" in str(world.dst_agent.errors[0]).lower()  # type: ignore[attr-defined]


async def test_without_tickets_every_handshake_is_full(world: World, anchor, authority) -> None:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem(), resume=False)
    store.want({WEB, API})
    world.src = store.install(issue(authority, WEB))
    world.dst = store.install(issue(authority, API))
    for _ in range(3):
        assert await _request(world.src_port, b"x") == b"echo:x"
    assert world.resumed == [False, False, False]


async def test_finished_tunnels_are_freed_without_the_cycle_collector(world: World) -> None:
    """Every relayed connection's objects (TLS state, buffers, observers) go when it ends, by
    reference counting: left to the cyclic collector, a burst of connections stayed in memory
    (1500 connections' worth in the lab) until a full collection happened to run."""
    import gc

    def alive() -> dict[str, int]:
        kinds = ("Relay", "_Half", "TlsLayer", "TlsTransport", "SSLObject", "MemoryBIO")
        found = dict.fromkeys(kinds, 0)
        for obj in gc.get_objects():
            name = type(obj).__name__
            if name in found:
                found[name] += 1
        return found

    gc.collect()
    gc.disable()
    try:
        for i in range(5):
            assert await _request(world.src_port, b"x%d" % i) == b"echo:x%d" % i
        await asyncio.sleep(0.1)
        assert alive() == dict.fromkeys(alive(), 0)
    finally:
        gc.enable()


# --- half-close and idle reaping (issue 12 item 5) ----------------------------------------


async def _silent_app(held: list[asyncio.StreamWriter]) -> tuple[asyncio.Server, int]:
    """Reads to the client's EOF, then never answers and never closes (a stuck server)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        held.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def _until(condition: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_half_closed_relay_nobody_answers_is_reaped(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that half-closes and a server that never answers: both agents' relays (and the
    mTLS tunnel between them) end after the half-closed timeout, and the client is told."""
    from nodeagent.proxy import l4proxy

    monkeypatch.setattr(l4proxy, "HALF_CLOSED_TIMEOUT", 1.5, raising=False)
    held: list[asyncio.StreamWriter] = []
    app, world.app_port = await _silent_app(held)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", world.src_port)
        writer.write(b"anyone there?")
        writer.write_eof()
        assert await _until(lambda: bool(held), 10), "the half-close never reached the server"
        relays = [*world.src_agent.relays, *world.dst_agent.relays]  # type: ignore[attr-defined]
        assert len(relays) == 2
        # Well past the timeout (a loaded machine), yet far less than "minutes".
        answer = await asyncio.wait_for(reader.read(), 15)
        assert answer == b""  # closed by the source agent, not left in FIN-WAIT-2
        assert await _until(
            lambda: not world.src_agent.relays and not world.dst_agent.relays,
            10,  # type: ignore[attr-defined]
        ), "a half-closed relay outlived its timeout"
        for relay in relays:
            assert relay.down.lost and relay.up is not None and relay.up.lost
        # The destination agent's socket to the server is closed too: a late answer is refused.
        with pytest.raises(ConnectionError):
            for _ in range(100):
                held[0].write(b"too late")
                await held[0].drain()
                await asyncio.sleep(0.05)
        writer.close()
    finally:
        for w in held:
            w.close()
        app.close()


async def test_a_slow_answer_to_a_half_closed_request_still_arrives(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle means idle: a server that answers a half-closed request in pieces, each sooner than
    the timeout but all of them together later than it, is not cut off."""
    from nodeagent.proxy import l4proxy

    monkeypatch.setattr(l4proxy, "HALF_CLOSED_TIMEOUT", 0.6, raising=False)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        for i in range(8):
            await asyncio.sleep(0.2)
            writer.write(b"part%d;" % i)
            await writer.drain()
        writer.close()

    app = await asyncio.start_server(trickle, "127.0.0.1", 0)
    world.app_port = int(app.sockets[0].getsockname()[1])
    try:
        answer = await _request(world.src_port, b"go")
        assert answer == b"".join(b"part%d;" % i for i in range(8))
        assert await _until(
            lambda: not world.src_agent.relays and not world.dst_agent.relays,
            10,  # type: ignore[attr-defined]
        )
    finally:
        app.close()


@pytest.mark.parametrize(
    ("observe", "answer", "offered", "observed"),
    [
        (True, pre.ReplyFlags.OBSERVED_AT_SOURCE, True, True),
        # A destination agent that knows nothing of it answers with zero flags: each side
        # reports its own requests, none counted twice.
        (True, pre.ReplyFlags.NONE, True, False),
        # A destination claiming it without the offer is not believed.
        (False, pre.ReplyFlags.OBSERVED_AT_SOURCE, False, False),
    ],
)
async def test_observe_once_holds_only_when_offered_and_taken(
    world: World,
    observe: bool,
    answer: pre.ReplyFlags,
    offered: bool,
    observed: bool,
) -> None:
    world.observe, world.reply_flags = observe, answer
    assert await _request(world.src_port, b"ping") == b"echo:ping"  # type: ignore[attr-defined]
    assert (world.offered, world.observed) == ([offered], [observed])
