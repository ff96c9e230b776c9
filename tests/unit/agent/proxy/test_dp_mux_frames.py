"""The shared tunnel connection's own DATA/WINDOW_UPDATE framing (nodeagent.proxy.mux): frames
of many streams go out together, flow control holds a slow reader's sender and no one else, and
a standard HTTP/2 peer (the h2 library, padding, END_STREAM on DATA) is understood.

Two sessions over an in-memory carrier: what one writes, the other receives on the next turn of
the loop, and every write() is counted (one TLS record and one send each, in the agent)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from nodeagent.protocol import mux as wire
from nodeagent.proxy.mux import HIGH_WATER, MuxSession, MuxStream, StreamRefused


class Carrier:
    """One end of the carrier: its writes reach `peer` (a session, or a callable) in pieces of
    16 KiB at most, as the TLS layer hands over one record at a time (a 64 KiB DATA frame
    arrives in five parts)."""

    RECORD = 16 * 1024

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.peer: Any = None
        self.closed = False

    def write(self, data: bytes) -> None:
        data = bytes(data)
        self.writes.append(data)
        deliver = getattr(self.peer, "data_received", self.peer)
        loop = asyncio.get_running_loop()
        for i in range(0, len(data), self.RECORD):
            loop.call_soon(deliver, data[i : i + self.RECORD])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class App(asyncio.Protocol):
    """An app connection's end of a stream: keeps what it got, can start paused."""

    def __init__(self, *, paused: bool = False) -> None:
        self.got = bytearray()
        self.eof = False
        self.start_paused = paused
        self.write_paused = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.start_paused:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False


def _attach(stream: MuxStream, app: App) -> None:
    """Serve `stream` with `app`, as an agent's handler does with its relay."""
    stream.protocol = app
    app.connection_made(stream)


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def _pair(server_apps: list[App]) -> tuple[MuxSession, MuxSession, Carrier, Carrier]:
    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        app = server_apps.pop(0)
        _attach(stream, app)

    client = MuxSession(client_side=True)
    server = MuxSession(client_side=False, on_stream=on_stream)
    to_server, to_client = Carrier(), Carrier()
    to_server.peer, to_client.peer = server, client
    client.start(to_server)
    server.start(to_client)
    await settle()
    return client, server, to_server, to_client


async def test_small_writes_of_many_streams_in_one_turn_leave_in_one_write() -> None:
    servers = [App() for _ in range(20)]
    client, server, to_server, _ = await _pair(list(servers))
    clients = [App() for _ in range(20)]
    for app in clients:
        client.open_stream(app, ("10.244.2.7", 6379))
    await settle()
    to_server.writes.clear()
    for i, app in enumerate(clients):  # 20 app connections each had a request in this turn
        app.transport.write(b"GET key%d\r\n" % i)
    await settle()
    assert len(to_server.writes) == 1  # one TLS record, one send (it was one per stream)
    assert [bytes(s.got) for s in servers] == [b"GET key%d\r\n" % i for i in range(20)]


def _pattern(n: int) -> bytes:
    return hashlib.sha256(b"seed").digest() * (n // 32) + b"z" * (n % 32)


async def test_a_paused_reader_holds_its_sender_and_no_other_stream() -> None:
    slow, other = App(paused=True), App()
    client, server, *_ = await _pair([slow, other])
    slow_src, other_src = App(), App()
    s1 = client.open_stream(slow_src, ("10.244.2.7", 80))
    s2 = client.open_stream(other_src, ("10.244.2.7", 81))
    await settle()
    big = _pattern(3 * wire.STREAM_WINDOW + 12345)
    s1.write(big)
    await settle(60)
    # The stream's window went out (and no more), the rest waits in its buffer: its writer is
    # paused, as a TCP socket's would be with a reader that does not read.
    assert slow_src.write_paused
    assert len(big) - len(s1.out) <= wire.STREAM_WINDOW
    assert len(s1.out) > HIGH_WATER
    s2.write(b"meanwhile " * 10000)
    s2.write_eof()
    await settle(60)
    assert bytes(other.got) == b"meanwhile " * 10000 and other.eof
    slow.transport.resume_reading()
    s1.write_eof()
    for _ in range(400):
        await asyncio.sleep(0)
        if slow.eof:
            break
    assert bytes(slow.got) == big and slow.eof
    assert not slow_src.write_paused
    # Both ends agree on the connection's window: nothing was lost or counted twice.
    assert client.send_window == server.recv_window


async def test_a_standard_http2_peer_with_padding_and_end_stream_on_data() -> None:
    app = App()
    apps = [app]

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        assert target == ("10.244.2.7", 8080)
        a = apps.pop(0)
        _attach(stream, a)

    server = MuxSession(client_side=False, on_stream=on_stream)
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    events: list[h2.events.Event] = []
    to_server, to_peer = Carrier(), Carrier()
    to_server.peer = server
    to_peer.peer = lambda data: events.extend(peer.receive_data(data))
    peer.initiate_connection()
    server.start(to_peer)
    to_server.write(peer.data_to_send())
    await settle()
    to_server.write(peer.data_to_send())  # its SETTINGS ACK
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, wire.connect_headers("10.244.2.7", 8080))
    peer.send_data(sid, b"padded ", pad_length=9)
    peer.send_data(sid, b"and the last", end_stream=True)
    to_server.write(peer.data_to_send())
    await settle()
    assert bytes(app.got) == b"padded and the last"
    assert app.eof
    app.transport.write(b"x" * 100_000)  # more than h2's default window: updates must come
    app.transport.write_eof()
    got = bytearray()
    for _ in range(100):
        await settle(2)
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                got += ev.data
                peer.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        ended = any(isinstance(ev, h2.events.StreamEnded) for ev in events)
        events.clear()
        out = peer.data_to_send()
        if out:
            to_server.write(out)
        if ended:
            break
    assert bytes(got) == b"x" * 100_000


class _Reads(App):
    """An app end that also keeps each read, empty ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.reads.append(data)
        super().data_received(data)


async def test_a_stream_ended_without_data_delivers_an_end_not_an_empty_read() -> None:
    """END_STREAM travels as an empty DATA frame, which h2 reports as data received: handed on
    as data_received(b""), the source agent's protocol detection took it for a server that
    speaks first, and every later connection to that destination went unobserved (no request
    metrics, no tap) after one silent client closed (test_lab_third_party found it)."""
    theirs = App()
    client, server, _, _ = await _pair([theirs])
    mine = _Reads()
    stream = client.open_stream(mine, ("10.244.2.7", 8080))
    await settle()
    server.streams[stream.id].write_eof()  # the app behind the destination closed, silent
    await settle()
    assert mine.eof
    assert mine.reads == []


class Lost(App):
    """A client app connection that records how its stream ended."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[Exception | None] = []

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def test_a_stream_opened_as_the_peer_starts_draining_is_refused_not_cut() -> None:
    """The destination agent drains (a rollout) while its peer opens a stream on the idle
    connection, the CONNECT already on its way: the stream must come back refused (the pool
    then opens it on a fresh connection to the successor), not die with the connection, which
    the source agent would pass on to the app as a reset (hey's "connection reset by peer")."""
    client, server, to_server, to_client = await _pair([])
    deliver = to_server.peer

    def after_close(data: bytes) -> None:  # a socket closed with bytes unread resets
        if to_client.closed:
            client.connection_lost(ConnectionResetError("reset by peer"))
        else:
            deliver.data_received(data)

    to_server.peer = after_close
    app = Lost()
    client.open_stream(app, ("10.244.2.7", 80))  # its CONNECT crosses the drain notice
    server.go_away()
    await settle()
    assert len(app.lost) == 1, app.lost
    assert isinstance(app.lost[0], StreamRefused), app.lost[0]
    assert client.going_away  # the source agent opens nothing more on it
    await settle()
    assert to_client.closed and to_server.closed  # and the connection ends, from both ends


async def test_request_and_answer_over_a_stream_look_up_no_loop(monkeypatch: Any) -> None:
    """On CPython 3.11 each asyncio.get_running_loop() is a getpid() system call: the session
    used to ask for the loop for every record it read and every write it queued (about one
    extra syscall per request in each agent under keep-alive load). It keeps the loop now."""
    import sys

    import nodeagent.proxy.mux as mux_module

    server_app = App()
    client, server, *_ = await _pair([server_app])
    app = App()
    stream = client.open_stream(app, ("10.244.2.7", 80))
    await settle()
    lookups = 0
    real = asyncio.get_running_loop

    def counting() -> asyncio.AbstractEventLoop:
        nonlocal lookups
        if sys._getframe(1).f_code.co_filename == mux_module.__file__:
            lookups += 1
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", counting)
    for i in range(50):
        stream.write(b"GET /%d HTTP/1.1\r\n\r\n" % i)
        await settle(4)
        server_app.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await settle(4)
    monkeypatch.setattr(asyncio, "get_running_loop", real)
    assert app.got.count(b"200 OK") == 50 and server_app.got.count(b"GET /") == 50
    assert lookups == 0


class _Peer:
    """A standard HTTP/2 end (the h2 library) facing a session over carriers: a client facing
    a server session, or (client_side=False) a server facing a client session."""

    def __init__(self, session: MuxSession, *, client_side: bool = True) -> None:
        config = h2.config.H2Configuration(client_side=client_side)
        self.h2 = h2.connection.H2Connection(config)
        self.events: list[h2.events.Event] = []
        self.to_session, self.to_peer = Carrier(), Carrier()
        self.to_session.peer = session
        self.to_peer.peer = lambda data: self.events.extend(self.h2.receive_data(data))
        self.h2.initiate_connection()

    def send(self) -> None:
        out = self.h2.data_to_send()
        if out:
            self.to_session.write(out)

    def answers(self) -> dict[int, bytes]:
        return {ev.stream_id: dict(ev.headers)[b":status"] for ev in self.events
                if isinstance(ev, h2.events.ResponseReceived)}  # fmt: skip

    def resets(self) -> dict[int, int]:
        return {ev.stream_id: ev.error_code for ev in self.events
                if isinstance(ev, h2.events.StreamReset)}  # fmt: skip


def _connect_then_reset(peer: h2.connection.H2Connection) -> bytes:
    """A client's CONNECT for a stream it resets before any answer (its app connection went
    away), and then a CONNECT that stays, each with its first bytes: all of it in one read."""
    gone, kept = 1, 3
    peer.send_headers(gone, wire.connect_headers("10.244.2.7", 8080))
    peer.reset_stream(gone, h2.errors.ErrorCodes.CANCEL)
    peer.send_headers(kept, wire.connect_headers("10.244.2.7", 8080))
    peer.send_data(kept, b"still here")
    return peer.data_to_send()


@pytest.mark.parametrize("where", ["with the first bytes", "later"])
async def test_a_stream_the_client_reset_before_its_answer_costs_only_that_stream(
    where: str,
) -> None:
    """Seen in the lab under a rollout: a CONNECT and its RST_STREAM read together made the
    server's answer raise (the stream was already closed), which ended the whole shared tunnel
    connection; when it came with the connection's first bytes, the session was left unread
    with every later stream of that peer hanging."""
    apps: list[App] = []
    targets: list[int] = []

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        app = App()
        apps.append(app)
        targets.append(stream.id)
        _attach(stream, app)

    server = MuxSession(client_side=False, on_stream=on_stream)
    peer = _Peer(server)
    if where == "with the first bytes":
        server.start(peer.to_peer, peer.h2.data_to_send() + _connect_then_reset(peer.h2))
    else:
        server.start(peer.to_peer)
        peer.send()
        await settle()
        server.data_received(_connect_then_reset(peer.h2))
    await settle()
    assert not server.closed and not peer.to_peer.closed
    assert targets == [3] and bytes(apps[0].got) == b"still here"
    peer.send()
    await settle()
    assert peer.answers() == {3: b"200"}
    apps[0].transport.write(b"answer")
    await settle()
    got = [ev.data for ev in peer.events if isinstance(ev, h2.events.DataReceived)]
    assert b"".join(got) == b"answer"


async def test_a_stream_that_fails_to_start_is_reset_and_its_neighbours_served() -> None:
    started: list[int] = []

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        if target[1] == 1:
            raise RuntimeError("a bug in starting this stream")
        started.append(stream.id)
        app = App()
        _attach(stream, app)

    server = MuxSession(client_side=False, on_stream=on_stream)
    peer = _Peer(server)
    for sid, port in ((1, 8080), (3, 1), (5, 8080)):
        peer.h2.send_headers(sid, wire.connect_headers("10.244.2.7", port))
    server.start(peer.to_peer, peer.h2.data_to_send())
    await settle()
    assert started == [1, 5] and not server.closed
    assert peer.answers() == {1: b"200", 3: b"200", 5: b"200"}
    assert peer.resets() == {3: h2.errors.ErrorCodes.INTERNAL_ERROR}


async def test_a_failure_acting_on_frames_ends_the_connection_with_a_goaway(
    monkeypatch: Any,
) -> None:
    """Not left open and unread (as when it came with the connection's first bytes, before
    reading resumed): the peer hears GOAWAY and takes its next streams elsewhere."""

    def broken(self: MuxStream) -> None:
        raise RuntimeError("a bug acting on END_STREAM")

    monkeypatch.setattr(MuxStream, "ended", broken)

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        app = App()
        _attach(stream, app)

    server = MuxSession(client_side=False, on_stream=on_stream)
    peer = _Peer(server)
    peer.h2.send_headers(1, wire.connect_headers("10.244.2.7", 8080), end_stream=True)
    server.start(peer.to_peer, peer.h2.data_to_send())
    await settle()
    assert server.closed or peer.to_peer.closed
    assert peer.to_peer.closed
    ended = [ev for ev in peer.events if isinstance(ev, h2.events.ConnectionTerminated)]
    assert [ev.error_code for ev in ended] == [h2.errors.ErrorCodes.INTERNAL_ERROR]


async def test_our_stream_frames_are_what_a_standard_http2_server_understands() -> None:
    """The client side writes its own HEADERS (a CONNECT of HPACK literals), END_STREAM and
    RST_STREAM frames and reads the server's, h2 only keeping SETTINGS and PING: a standard
    server (the h2 library) must see a CONNECT to the target, the bytes and the half-close in
    order, and its answers (HEADERS, DATA, END_STREAM, RST_STREAM) must
    reach the app as data, end and a reset."""
    client = MuxSession(client_side=True)
    server = _Peer(client, client_side=False)
    client.start(server.to_peer)
    server.send()
    await settle()
    mine, other = App(), Lost()
    stream = client.open_stream(mine, ("fd00::7", 8080))
    second = client.open_stream(other, ("10.244.2.7", 9090))
    stream.write(b"hello")
    stream.write_eof()
    await settle()
    requests = {ev.stream_id: dict(ev.headers) for ev in server.events
                if isinstance(ev, h2.events.RequestReceived)}  # fmt: skip
    assert requests == {
        stream.id: {b":method": b"CONNECT", b":authority": b"[fd00::7]:8080"},
        second.id: {b":method": b"CONNECT", b":authority": b"10.244.2.7:9090"},
    }
    assert wire.parse_connect(list(requests[stream.id].items())) == ("fd00::7", 8080)
    got = b"".join(ev.data for ev in server.events if isinstance(ev, h2.events.DataReceived))
    assert got == b"hello"
    assert [ev.stream_id for ev in server.events if isinstance(ev, h2.events.StreamEnded)] == [1]
    server.h2.send_headers(stream.id, [(b":status", b"200")])
    server.h2.send_data(stream.id, b"world", end_stream=True)
    server.h2.send_headers(second.id, [(b":status", b"200")])
    server.h2.reset_stream(second.id, h2.errors.ErrorCodes.CANCEL)
    server.send()
    await settle()
    assert bytes(mine.got) == b"world" and mine.eof and stream.answered
    stream.close()
    await settle()
    assert stream.id not in client.streams  # over both ways, and closed here
    assert len(other.lost) == 1 and "CANCEL" in str(other.lost[0])
    assert not client.closed and not server.to_peer.closed


async def test_a_header_block_split_over_continuation_ends_the_connection_naming_the_last_stream() -> (
    None
):
    """A peer agent never splits a header block (a CONNECT is a few dozen bytes); one that does
    is not understood: GOAWAY (PROTOCOL_ERROR), naming the last stream it opened so that it
    retries only what came after."""
    server = MuxSession(client_side=False, on_stream=lambda stream, target: None)
    peer = _Peer(server)
    peer.h2.send_headers(1, wire.connect_headers("10.244.2.7", 8080))
    opening = peer.h2.data_to_send()
    block = wire.encode_connect("10.244.2.7", 8080)
    split = (
        (len(block) - 3).to_bytes(3, "big") + b"\x01\x00" + (3).to_bytes(4, "big") + block[:-3]
        + (3).to_bytes(3, "big") + b"\x09\x04" + (3).to_bytes(4, "big") + block[-3:]
    )  # fmt: skip
    server.start(peer.to_peer, opening + split)
    await settle()
    assert peer.to_peer.closed
    ended = [ev for ev in peer.events if isinstance(ev, h2.events.ConnectionTerminated)]
    assert [(ev.error_code, ev.last_stream_id) for ev in ended] == [
        (h2.errors.ErrorCodes.PROTOCOL_ERROR, 1)
    ]


async def test_streams_beyond_the_limit_are_refused_and_the_others_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_STREAMS", 2)
    started: list[int] = []

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        started.append(stream.id)
        app = App()
        _attach(stream, app)

    server = MuxSession(client_side=False, on_stream=on_stream)
    peer = _Peer(server)
    for sid in (1, 3, 5):  # sent before the server's SETTINGS reach the peer; with priority
        peer.h2.send_headers(sid, wire.connect_headers("10.244.2.7", 8080), priority_weight=99)
    server.start(peer.to_peer, peer.h2.data_to_send())
    await settle()
    assert started == [1, 3] and not server.closed
    assert peer.answers() == {1: b"200", 3: b"200"}
    assert peer.resets() == {5: h2.errors.ErrorCodes.REFUSED_STREAM}


async def test_a_padded_connect_and_the_frames_after_it_are_read_in_place() -> None:
    """HEADERS with padding and priority (a standard client may send them): the block between,
    and the next frame read after the padding, not inside it."""
    apps: list[App] = []

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        assert target == ("10.244.2.7", 8080)
        app = App()
        apps.append(app)
        _attach(stream, app)

    server = MuxSession(client_side=False, on_stream=on_stream)
    peer = _Peer(server)
    opening = peer.h2.data_to_send()
    block = wire.encode_connect("10.244.2.7", 8080)
    # Padding that looks like a RST_STREAM of stream 1: read as a frame, it would drop the stream.
    padding = (4).to_bytes(3, "big") + b"\x03\x00" + (1).to_bytes(4, "big") + b"\x00\x00\x00\x08"
    payload = bytes([len(padding)]) + b"\x00\x00\x00\x00\x10" + block + padding
    headers = len(payload).to_bytes(3, "big") + b"\x01\x2c" + (1).to_bytes(4, "big") + payload
    data = (5).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big") + b"hello"
    server.start(peer.to_peer, opening + headers + data)
    await settle()
    assert not server.closed and len(apps) == 1 and bytes(apps[0].got) == b"hello"
    # Answered 200 (HEADERS, END_HEADERS, stream 1, ":status 200" as one static-table byte;
    # read off the wire: the h2 end did not open this stream itself, so it would refuse it).
    answer = (1).to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big") + wire.STATUS_200
    assert answer in b"".join(peer.to_peer.writes)
