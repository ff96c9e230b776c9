"""Many app connections over one agent-to-agent mTLS connection (issue 17, "no handshake per app
connection"): the wire's CONNECT target (sans-io), the pool's choices (sans-io), and on loopback
a source relay using the real pool and a destination agent serving HTTP/2 CONNECT streams with
the real TLS layer, certificates, preamble and reply, in front of an echo app."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import hpack
import pytest
from dp_identities import API, WEB, issue
from test_dp_tunnel import RESET, STATS, Agent, _echo, _plain_socket, _request

from controlplane.identity import CertificateAuthority
from nodeagent.protocol import mux as wire
from nodeagent.protocol import preamble as pre
from nodeagent.proxy import pooling, tunnelpool
from nodeagent.proxy.l4proxy import SEND_AHEAD_MAX, Relay
from nodeagent.proxy.mux import MuxSession, MuxStream
from nodeagent.proxy.routing import Target
from nodeagent.proxy.tunnel import (
    PeerSilent,
    TunnelDenied,
    TunnelRefused,
    accept_tls,
    open_tunnel,
    read_preamble,
    reply,
)
from nodeagent.proxy.tunnelpool import NoMux, TunnelPool, pool_key
from nodeagent.upstream.certstore import CertStore, Held
from nodemesh import certs, tasks
from nodemesh.identity import CaMaterial

# --- the CONNECT target (sans-io) ---------------------------------------------------------


def test_connect_headers_round_trip() -> None:
    assert wire.parse_connect(wire.connect_headers("10.244.2.7", 8080)) == ("10.244.2.7", 8080)
    assert wire.parse_connect(wire.connect_headers("fd00::7", 443)) == ("fd00::7", 443)
    for ip in ("10.244.2.7", "fd00::7"):  # what an agent sends decodes to those fields
        block = wire.encode_connect(ip, 443)
        assert hpack.Decoder().decode(block, raw=True) == wire.connect_headers(ip, 443)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([(b":method", b"GET"), (b":authority", b"10.0.0.1:80")], "expected CONNECT"),
        ([(b":method", b"CONNECT"), (b":authority", b"api.shop:80")], "bad :authority"),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1")], "no port"),
        ([(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:0")], "out of range"),
        ([(b":method", b"CONNECT")], "bad :authority ''"),
    ],
)
def test_a_bad_connect_is_refused_naming_what_is_wrong(
    headers: list[tuple[bytes, bytes]], says: str
) -> None:
    with pytest.raises(wire.MuxHeaderError, match=says):
        wire.parse_connect(headers)


# --- the pool's choices (sans-io) ---------------------------------------------------------

CRED, NEW_CRED = object(), object()


def _carrier(state: pooling.PoolState, key: str = "k", now: float = 0.0) -> pooling.Carrier:
    c = pooling.Carrier(key=key, created=now, credential=CRED)
    state.added(c)
    return c


def test_the_busiest_connection_with_room_takes_the_next_stream() -> None:
    state = pooling.PoolState(max_streams=2)
    assert state.pick("k", now=0, credential=CRED) is None  # nothing yet: dial
    a, b = _carrier(state), _carrier(state)
    state.stream_opened(b)
    assert state.pick("k", now=1, credential=CRED) is b
    state.stream_opened(b)
    assert state.pick("k", now=1, credential=CRED) is a  # b is full
    state.stream_opened(a)
    state.stream_opened(a)
    assert state.pick("k", now=1, credential=CRED) is None
    assert state.pick("other", now=1, credential=CRED) is None  # keys never share


def test_the_peer_limit_caps_streams_too() -> None:
    state = pooling.PoolState(max_streams=100)
    c = _carrier(state)
    c.peer_max_streams = 1
    state.stream_opened(c)
    assert state.pick("k", now=0, credential=CRED) is None


@pytest.mark.parametrize("why", ["going_away", "broken", "renewed", "old"])
def test_an_unusable_connection_takes_no_new_stream_and_is_retired_once_empty(why: str) -> None:
    state = pooling.PoolState(max_age=600)
    c = _carrier(state)
    state.stream_opened(c)
    cred, now = CRED, 1.0
    if why == "going_away":
        c.going_away = True
    elif why == "broken":
        c.broken = True
    elif why == "renewed":
        cred = NEW_CRED  # the source's certificate was renewed
    else:
        now = 601.0
    assert state.pick("k", now=now, credential=cred) is None
    assert state.retire(now=now) == []  # a stream still runs on it
    state.stream_closed(c, now=now)
    if why == "renewed":
        assert state.retire(now=now) == []  # still fine for who holds the old certificate
    else:
        assert state.retire(now=now) == [c]
        assert list(state.all()) == []


def test_idle_connections_are_retired_after_idle_after() -> None:
    state = pooling.PoolState(idle_after=30)
    c = _carrier(state)
    state.stream_opened(c)
    state.stream_closed(c, now=10)
    assert state.retire(now=39) == []
    state.stream_opened(c)  # used again: not idle
    assert state.retire(now=45) == []
    state.stream_closed(c, now=50)
    assert state.retire(now=80) == [c]


def test_a_peer_without_multiplexing_is_remembered_for_a_while() -> None:
    state = pooling.PoolState(legacy_for=60)
    state.mark_legacy("10.0.0.2", now=0)
    assert state.is_legacy("10.0.0.2", now=59)
    assert not state.is_legacy("10.0.0.3", now=1)
    assert not state.is_legacy("10.0.0.2", now=60)


# --- on loopback --------------------------------------------------------------------------


@dataclass
class MuxWorld:
    src: Held
    dst: Held
    app_port: int
    pool: TunnelPool
    old_server: bool = False  # the destination agent predates multiplexing
    deny_port: int = -1
    dst_port: int = 0
    src_port: int = 0
    seen: list[tuple[str, int]] = field(default_factory=list)  # (client identity, port)
    sessions: list[MuxSession] = field(default_factory=list)
    handshakes: int = 0
    legacy_tunnels: int = 0
    # Sending ahead (the outbound handler's choice): the source lets the client's first bytes
    # go with the preamble; what the destination held of them when it read each preamble.
    send_ahead: bool = False
    early_at_admit: list[bytes] = field(default_factory=list)
    hold: asyncio.Event | None = None  # the source starts once the test sets it
    refused_first: int = 0  # a port the source tries first (nothing listens: CONNECT_FAILED)
    admit_delay: float = 0.0  # the destination admits this much later (a slow app connect)


@pytest.fixture
async def mw(anchor: CaMaterial, authority: CertificateAuthority) -> AsyncIterator[MuxWorld]:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    store.want({WEB, API})
    app = await asyncio.start_server(_echo, "127.0.0.1", 0)
    w = MuxWorld(
        src=store.install(issue(authority, WEB)),
        dst=store.install(issue(authority, API)),
        app_port=app.sockets[0].getsockname()[1],
        pool=TunnelPool(trust_anchors_pem=anchor.certificate_pem()),
    )
    old_context = certs.server_context(w.dst.certified, trust_anchors_pem=anchor.certificate_pem())
    loop = asyncio.get_running_loop()

    async def admit(relay: Relay, client_id: str, header: pre.Preamble) -> None:
        w.seen.append((client_id, header.target_port))
        w.early_at_admit.append(bytes(relay.early))
        if w.admit_delay:
            await asyncio.sleep(w.admit_delay)
        if header.target_port == w.deny_port:
            reply(relay, pre.ReplyCode.POLICY_DENIED)
            relay.decline("denied")
            return
        sock = _plain_socket()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", header.target_port))
        except OSError:
            sock.close()
            reply(relay, pre.ReplyCode.CONNECT_FAILED)
            relay.decline("app refused")
            return
        await relay.open_upstream(sock)
        reply(relay, pre.ReplyCode.ACCEPTED)
        relay.start()

    async def destination(relay: Relay) -> None:
        held = w.dst
        if w.old_server:
            held = Held(old_context, old_context, w.dst.client, w.dst.sessions, 0, 0)  # type: ignore[arg-type]
            held.certified = w.dst.certified
        client_id, muxed = await accept_tls(relay, held=held)
        w.handshakes += 1
        if not muxed:
            w.legacy_tunnels += 1
            await admit(relay, client_id, await read_preamble(relay))
            return
        transport, early = relay.detach_down()

        def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
            async def serve(r: Relay) -> None:
                header = await read_preamble(r)
                assert (str(header.original_ip), header.target_port) == target
                await admit(r, client_id, header)

            r = Relay(STATS, dst_agent.relays, lambda r: tasks.spawn(serve(r), name="stream"))
            stream.protocol = r.down
            r.down.connection_made(stream)  # type: ignore[arg-type]

        session = MuxSession(client_side=False, on_stream=on_stream)
        w.sessions.append(session)
        transport.set_protocol(session)  # type: ignore[attr-defined]
        session.start(transport, early)

    async def source(relay: Relay) -> None:
        port = relay.downstream_socket.getsockname()[1]
        app_port = w.deny_port if port == deny_listener_port else w.app_port
        target = Target("127.0.0.1", app_port, meshed=True, identity=API)
        if w.send_ahead:
            relay.send_ahead = True
        if w.hold is not None:
            await w.hold.wait()

        async def connect() -> socket.socket:
            sock = _plain_socket()
            await loop.sock_connect(sock, ("127.0.0.1", w.dst_port))
            return sock

        async def open_to(target: Target) -> None:
            await w.pool.open(
                relay, key=pool_key(netns="/run/netns/web-1", source_ip="127.0.0.1",
                                    identity=WEB, target=target), connect=connect, held=w.src, target=target,
                source_namespace="shop", source_pod="web-1", opaque=False, timeout=5,
            )  # fmt: skip

        try:
            if w.refused_first:
                try:  # as connect_route tries the next endpoint
                    await open_to(Target("127.0.0.1", w.refused_first, meshed=True, identity=API))
                except TunnelRefused:
                    relay.drop_upstream()
            await open_to(target)
        except NoMux:
            relay.drop_upstream()
            await open_tunnel(relay, await connect(), held=w.src, target=target,
                              source_namespace="shop", source_pod="web-1")  # fmt: skip
        relay.start()

    dst_agent = Agent(destination)
    src_agent = Agent(source)
    deny_agent = Agent(source)
    w.dst_port = await dst_agent.start()
    w.src_port = await src_agent.start()
    deny_listener_port = await deny_agent.start()
    w.deny_listener_port = deny_listener_port  # type: ignore[attr-defined]
    w.src_agent = deny_agent  # type: ignore[attr-defined]  (its errors: the denied ones)
    w.source_agent = src_agent  # type: ignore[attr-defined]
    yield w
    w.pool.go_away()
    for session in w.sessions:
        session.close()
    for agent in (src_agent, deny_agent, dst_agent):
        agent.close()
    app.close()
    await asyncio.sleep(0.05)


async def test_sequential_connections_share_one_handshake_and_keep_half_close(
    mw: MuxWorld,
) -> None:
    payload = b"through a stream " * 5000  # beyond one stream window's worth of frames
    for i in range(20):
        body = payload if i == 0 else b"n%d" % i
        assert await _request(mw.src_port, body) == b"echo:" + body  # the echo app reads to EOF
    assert mw.handshakes == 1
    assert mw.sessions[0].opened == 20
    # A long-lived connection whose peer node vanishes is ended by TCP keepalive.
    raw = mw.sessions[0].transport.get_extra_info("socket")
    assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    # Every stream was admitted as the source workload its connection proved.
    assert mw.seen == [(WEB, mw.app_port)] * 20


async def test_concurrent_connections_dial_once(mw: MuxWorld) -> None:
    got = await asyncio.gather(*(_request(mw.src_port, b"c%d" % i) for i in range(30)))
    assert got == [b"echo:c%d" % i for i in range(30)]
    assert mw.handshakes == 1


async def test_a_denied_stream_leaves_the_connection_to_the_others(mw: MuxWorld) -> None:
    mw.deny_port = mw.app_port + 1 if mw.app_port < 65535 else mw.app_port - 1
    assert await _request(mw.deny_listener_port, b"x") == RESET  # type: ignore[attr-defined]
    assert isinstance(mw.src_agent.errors[0], TunnelDenied)  # type: ignore[attr-defined]
    assert await _request(mw.src_port, b"still") == b"echo:still"
    assert mw.handshakes == 1


async def test_a_reset_app_connection_resets_only_its_stream(mw: MuxWorld) -> None:
    assert await _request(mw.src_port, b"warm") == b"echo:warm"
    reader, writer = await asyncio.open_connection("127.0.0.1", mw.src_port)
    writer.write(b"half a request")
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    writer.close()  # a reset (linger 0), not a FIN
    for _ in range(50):
        if not mw.sessions[0].streams:
            break
        await asyncio.sleep(0.05)
    assert not mw.sessions[0].streams  # its stream is gone ...
    assert await _request(mw.src_port, b"after") == b"echo:after"  # ... the connection stays
    assert mw.handshakes == 1


async def test_goaway_sends_new_connections_to_a_new_tunnel_connection(mw: MuxWorld) -> None:
    """What a draining agent does: the stream in flight finishes, the next one dials afresh."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mw.src_port)
    writer.write(b"begun before")
    await writer.drain()
    await asyncio.sleep(0.2)
    mw.sessions[0].go_away()
    await asyncio.sleep(0.1)
    assert await _request(mw.src_port, b"next") == b"echo:next"
    assert mw.handshakes == 2
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 10) == b"echo:begun before"
    writer.close()
    for _ in range(50):
        if mw.sessions[0].closed:
            break
        await asyncio.sleep(0.05)
    assert mw.sessions[0].closed  # the old connection closed once its last stream ended


async def test_an_older_destination_agent_gets_one_tunnel_per_connection(mw: MuxWorld) -> None:
    mw.old_server = True
    for i in range(3):
        assert await _request(mw.src_port, b"o%d" % i) == b"echo:o%d" % i
    # One probe (the old agent picked no ALPN: the pool closed it and remembered the peer),
    # then a tunnel connection of its own per app connection, as before.
    assert mw.legacy_tunnels == 1 + 3
    assert mw.sessions == []
    assert mw.seen == [(WEB, mw.app_port)] * 3


async def test_a_source_pod_that_left_has_its_connections_closed(mw: MuxWorld) -> None:
    assert await _request(mw.src_port, b"one") == b"echo:one"
    mw.pool.go_away(netns="/run/netns/other")  # another pod's: nothing changes
    await asyncio.sleep(0.1)
    assert not mw.sessions[0].closed
    mw.pool.go_away(netns="/run/netns/web-1")  # its listeners closed: it holds the netns
    for _ in range(50):
        if mw.sessions[0].closed:
            break
        await asyncio.sleep(0.05)
    assert mw.sessions[0].closed
    assert list(mw.pool.state.all()) == []


# --- the client's first bytes go with the preamble ------------------------------------------


async def _request_held(mw: MuxWorld, payload: bytes) -> bytes:
    """`_request`, with the source agent starting only once the payload is in its socket."""
    mw.hold = asyncio.Event()
    reader, writer = await asyncio.open_connection("127.0.0.1", mw.src_port)
    try:
        writer.write(payload)
        await writer.drain()  # on loopback: queued at the agent's socket when this returns
        writer.write_eof()
        mw.hold.set()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_the_first_bytes_travel_with_the_preamble_not_a_round_trip_later(
    mw: MuxWorld,
) -> None:
    """A new connection's request reaches the destination agent with the preamble (one
    frame), so it goes to the app as soon as the app is connected instead of after the reply
    came back to the source agent and the source sent it: one agent-to-agent round trip less
    per new connection."""
    mw.send_ahead = True
    request = b"GET /ahead HTTP/1.1\r\nHost: api\r\n\r\n"
    assert await _request_held(mw, request) == b"echo:" + request  # once, not twice
    assert mw.early_at_admit == [request]
    # Without it (a relay whose bytes pass a gate first), nothing comes before the reply.
    mw.send_ahead = False
    assert await _request_held(mw, b"gated") == b"echo:gated"
    assert mw.early_at_admit[1] == b""


async def test_bytes_sent_ahead_to_a_refusing_endpoint_reach_the_next_one_once(
    mw: MuxWorld,
) -> None:
    mw.send_ahead = True
    closed = _plain_socket()
    closed.bind(("127.0.0.1", 0))  # a port nothing listens on
    mw.refused_first = closed.getsockname()[1]
    try:
        assert await _request_held(mw, b"retried") == b"echo:retried"
    finally:
        closed.close()
    assert mw.early_at_admit == [b"retried", b"retried"]  # the refused one dropped its copy
    assert [port for _, port in mw.seen] == [mw.refused_first, mw.app_port]


async def test_a_large_first_write_goes_partly_ahead_and_arrives_whole(mw: MuxWorld) -> None:
    mw.send_ahead = True
    payload = bytes(range(256)) * 400  # 100 KiB: more than goes ahead
    assert await _request_held(mw, payload) == b"echo:" + payload
    assert mw.early_at_admit[0] == payload[:SEND_AHEAD_MAX]


# --- a destination that went silent ---------------------------------------------------------


async def test_a_peer_gone_silent_fails_a_new_stream_in_seconds_and_is_not_used_again(
    mw: MuxWorld,
) -> None:
    """A node gone without a word (no FIN, no RST): a new app connection riding the pooled
    connection to it gives up after PEER_SILENT_AFTER, as a TCP connect would, so the relay
    tries another endpoint, instead of waiting STREAM_REPLY_TIMEOUT (10 s) for a reply."""
    assert await _request(mw.src_port, b"before") == b"echo:before"
    mw.sessions[0].transport.pause_reading()  # the destination reads nothing more
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _request(mw.src_port, b"lost") == RESET
    assert loop.time() - started < tunnelpool.PEER_SILENT_AFTER + 2
    assert isinstance(mw.source_agent.errors[-1], PeerSilent)  # type: ignore[attr-defined]
    # The next app connection dials a new tunnel connection (the silent one takes no stream).
    assert await _request(mw.src_port, b"after") == b"echo:after"
    assert mw.handshakes == 2


async def test_a_slow_reply_from_a_live_peer_is_waited_for(mw: MuxWorld) -> None:
    """The destination agent answers the stream at once and replies once the app is connected:
    a slow app connect (longer than PEER_SILENT_AFTER) is not mistaken for a silent peer."""
    assert await _request(mw.src_port, b"warm") == b"echo:warm"
    mw.admit_delay = tunnelpool.PEER_SILENT_AFTER + 0.5
    assert await _request(mw.src_port, b"slow") == b"echo:slow"
    assert mw.handshakes == 1
