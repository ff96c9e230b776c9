"""The connection tap: detection without holding bytes, HTTP/1 and HTTP/2 requests as events."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable

import h2.config
import h2.connection
import pytest
from dp_sinks import RecordingSink

from nodeagent.observe.events import Peer, RequestStarted
from nodeagent.protocol.detect import ServerFirstMemory
from nodeagent.proxy.l7relay import ConnectionTap

SRC = Peer("10.0.0.1", "shop", "web-1", "Deployment", "web")
DST = Peer("10.0.0.2", "shop", "api-1", "Deployment", "api", service="api")


class Timers:
    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = 0

    def __call__(self, delay: float, fn: Callable[[], None]) -> Timers:
        self.pending.append((delay, fn))
        return self

    def cancel(self) -> None:
        self.cancelled += 1

    def fire(self) -> None:
        for _, fn in self.pending:
            fn()
        self.pending.clear()


def tap(sink: RecordingSink, **kw: object) -> ConnectionTap:
    args: dict[str, object] = dict(
        sink=sink,
        conn_id=7,
        direction="outbound",
        src=SRC,
        dst=DST,
        tls=True,
        dst_key=("10.96.0.10", 80),
        call_later=Timers(),
    )
    args.update(kw)
    return ConnectionTap(**args)  # type: ignore[arg-type]


def test_http1_keepalive_requests_each_become_an_event() -> None:
    sink = RecordingSink()
    t = tap(sink)
    c1, c2 = (
        b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n",
        b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    s1, s2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 503 No\r\n\r\n"
    t.client(c1)
    assert [o.protocol for o in sink.opened] == ["http1"]  # decided on the first chunk
    time.sleep(0.01)
    t.server(s1)
    t.client(c2)
    t.server(s2)
    t.closed("")
    a, b = sink.requests
    assert (a.method, a.authority, a.path, a.status, a.classification) == (
        "GET", "api", "/a", 200, "success",
    )  # fmt: skip
    assert (b.method, b.path, b.status, b.classification, b.request_bytes, b.reset) == (
        "POST", "/b", 503, "failure", 3, False,
    )  # fmt: skip
    assert a.response_bytes == 2 and a.conn_id == b.conn_id == 7 and a.req_id != b.req_id
    assert a.latency_first_byte_s is not None and a.latency_first_byte_s >= 0.01
    assert a.latency_s >= a.latency_first_byte_s
    assert a.src == SRC and a.dst == DST and a.tls and a.direction == "outbound"
    (closed,) = sink.closed
    assert closed.protocol == "http1" and closed.read_bytes == len(c1) + len(c2)
    assert closed.write_bytes == len(s1) + len(s2)


def test_every_field_of_the_request_event_is_in_its_place() -> None:
    """The tap builds RequestObserved positionally (it is cheaper): each field by name."""
    sink = RecordingSink()
    t = tap(sink, conn_id=41, tls=False)
    before = time.time()
    t.client(b"PUT /p?q=1 HTTP/1.1\r\nHost: api:8080\r\nContent-Length: 4\r\n\r\nabcd")
    time.sleep(0.02)
    t.server(b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\n")
    time.sleep(0.02)
    t.server(b"123456")
    (r,) = sink.requests
    assert r.conn_id == 41 and r.req_id != r.conn_id and isinstance(r.req_id, int)
    assert (r.direction, r.src, r.dst, r.protocol, r.tls) == ("outbound", SRC, DST, "http1", False)
    assert (r.method, r.authority, r.path) == ("PUT", "api:8080", "/p?q=1")
    assert (r.status, r.grpc_status, r.classification, r.reset) == (201, None, "success", False)
    assert (r.request_bytes, r.response_bytes) == (4, 6)
    assert r.latency_first_byte_s is not None and 0.02 <= r.latency_first_byte_s < 1
    assert r.latency_s >= r.latency_first_byte_s + 0.02
    assert before <= r.started_at <= before + 1


def test_a_server_banner_settles_the_connection_at_once_and_is_remembered() -> None:
    sink, memory = RecordingSink(), ServerFirstMemory()
    timers = Timers()
    t = tap(sink, memory=memory, call_later=timers)
    assert timers.pending  # undecided: the detection timer runs
    t.server(b"220 mail.example ESMTP\r\n")
    assert [o.protocol for o in sink.opened] == ["tcp"]
    assert timers.cancelled == 1
    t.client(b"EHLO me\r\n")
    t.closed("")
    # The next connection to the same destination does not even start a timer.
    timers2 = Timers()
    tap(sink, memory=memory, call_later=timers2)
    assert not timers2.pending and [o.protocol for o in sink.opened] == ["tcp", "tcp"]
    assert sink.requests == []
    # Visible to whoever looks at the agent: which destination, and for how long.
    from prometheus_client import generate_latest

    from nodeagent.observe.metrics import REGISTRY

    text = generate_latest(REGISTRY).decode()
    left = re.search(r'^nodemesh_agent_server_first_destination\{ip="10.96.0.10",port="80"\} (\S+)$',
                     text, re.M)  # fmt: skip
    assert left is not None and 500 < float(left[1]) <= 600, text
    assert "nodemesh_agent_server_first_destinations 1.0" in text


def test_a_silent_client_is_counted_open_when_the_detection_timer_fires() -> None:
    sink, timers = RecordingSink(), Timers()
    tap(sink, call_later=timers)
    assert sink.opened == []
    timers.fire()
    assert len(sink.opened) == 1  # TCP_CONN counts it while it says nothing


def test_a_silent_client_neither_loses_its_own_requests_nor_blinds_other_clients() -> None:
    """Go's load generators (hey) and connection pools open spare connections that say
    nothing for a while: that proves nothing about the server, so it must not turn this
    connection or later ones to the same destination opaque."""
    sink, memory, timers = RecordingSink(), ServerFirstMemory(), Timers()
    spare = tap(sink, memory=memory, call_later=timers)
    timers.fire()  # silent past the detection timeout
    other = tap(sink, memory=memory, call_later=Timers(), conn_id=8)
    for t in (other, spare):
        t.client(b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n")
        t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        t.closed("")
    assert len(memory) == 0
    assert [(r.conn_id, r.status) for r in sink.requests] == [(8, 200), (7, 200)]
    assert [c.protocol for c in sink.closed] == ["http1", "http1"]


def test_an_http_server_answering_an_idle_connection_is_not_taken_for_a_banner() -> None:
    # Some HTTP servers send "408 Request Timeout" to a connection that never sent a request.
    sink, memory, timers = RecordingSink(), ServerFirstMemory(), Timers()
    t = tap(sink, memory=memory, call_later=timers)
    timers.fire()
    t.server(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
    t.closed("")
    assert len(memory) == 0
    later = tap(sink, memory=memory, call_later=Timers(), conn_id=9)
    later.client(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    later.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    later.closed("")
    assert [r.conn_id for r in sink.requests] == [9]


def test_opaque_ports_and_the_sources_verdict_skip_detection() -> None:
    sink = RecordingSink()
    tap(sink, dst_key=("10.0.0.2", 5432))
    tap(sink, dst_key=("10.0.0.2", 8080), opaque_ports=frozenset({8080}))
    t = tap(sink, skip_detection=True)
    t.client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # looks like HTTP, but was declared opaque
    t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert [o.protocol for o in sink.opened] == ["tcp", "tcp", "tcp"]
    assert sink.requests == []


def test_tls_client_hello_is_tls_and_split_hellos_wait_for_the_rest() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="api.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    sink = RecordingSink()
    t = tap(sink)
    t.client(hello[:20])
    assert sink.opened == []
    t.client(hello[20:])
    assert [o.protocol for o in sink.opened] == ["tls"] and t.sni == "api.example"


def test_upgrade_switches_to_opaque_after_the_handshake() -> None:
    sink = RecordingSink()
    t = tap(sink)
    t.client(
        b"GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    switched = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    t.server(switched)
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # websocket, not HTTP
    for _ in range(3):
        t.client(frame)
        t.server(b"\x81\x05hello")
    t.closed("")
    (req,) = sink.requests
    assert req.status == 101 and req.classification == "success" and not req.reset
    assert t.observer is None and sink.closed[0].write_bytes == len(switched) + 3 * 7


def test_garbage_after_a_request_stops_observing_but_not_counting() -> None:
    sink = RecordingSink()
    t = tap(sink)
    t.client(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    t.client(b"\x00\xff not http at all\r\n\r\n")
    t.server(b"whatever")
    t.closed("")
    assert len(sink.requests) == 1 and t.observer is None
    assert sink.closed[0].write_bytes == 38 + 8


def test_a_connection_closed_mid_response_reports_a_reset_failure() -> None:
    sink = RecordingSink()
    t = tap(sink)
    t.client(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    t.closed("server: connection reset")
    (req,) = sink.requests
    assert req.reset and req.classification == "failure" and req.status == 200
    assert sink.closed[0].error == "server: connection reset"


def test_tap_gets_start_and_response_only_while_someone_taps() -> None:
    sink = RecordingSink()
    t = tap(sink)
    t.client(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    t.server(b"HTTP/1.1 204 No Content\r\n\r\n")
    sink.tap = True
    t.client(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
    t.server(b"HTTP/1.1 204 No Content\r\n\r\n")
    second = sink.requests[1].req_id
    assert sink.tapped == [("request", second), ("response", (second, 204))]


def _h2_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    return client, server


def test_grpc_calls_are_classified_by_their_trailers() -> None:
    sink = RecordingSink()
    t = tap(sink)
    client, server = _h2_pair()

    def c2s() -> None:
        data = client.data_to_send()
        t.client(data)
        server.receive_data(data)

    def s2c() -> None:
        data = server.data_to_send()
        t.server(data)
        client.receive_data(data)

    c2s()
    server.initiate_connection()
    s2c()
    headers = [
        (":method", "POST"), (":scheme", "http"), (":authority", "emoji:8080"),
        (":path", "/emojivoto.v1.EmojiService/ListAll"), ("content-type", "application/grpc"),
    ]  # fmt: skip
    for sid in (1, 3):
        client.send_headers(sid, headers)
        client.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    c2s()
    for sid, code in ((1, "0"), (3, "14")):
        server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        server.send_data(sid, b"\x00\x00\x00\x00\x02hi")
        server.send_headers(sid, [("grpc-status", code)], end_stream=True)
    s2c()
    t.closed("")
    assert [o.protocol for o in sink.opened] == ["http2"]
    ok, unavailable = sorted(sink.requests, key=lambda r: r.grpc_status or 0)
    assert (ok.protocol, ok.status, ok.grpc_status, ok.classification) == (
        "grpc", 200, 0, "success",
    )  # fmt: skip
    assert (unavailable.grpc_status, unavailable.classification) == (14, "failure")
    assert ok.path == "/emojivoto.v1.EmojiService/ListAll" and ok.authority == "emoji:8080"
    assert ok.response_bytes == 7 and ok.request_bytes == 5


def test_an_http2_server_sending_settings_first_is_still_http2() -> None:
    # gRPC servers send SETTINGS as soon as they accept, often before the client's preface has
    # crossed the tunnel: that must not be taken for a server-speaks-first protocol.
    sink = RecordingSink()
    t = tap(sink, direction="inbound")
    client, server = _h2_pair()
    server.initiate_connection()
    early = server.data_to_send()
    t.server(early)
    client.receive_data(early)
    assert t.protocol is None and not sink.opened
    data = client.data_to_send()
    t.client(data)
    server.receive_data(data)
    client.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "e:8080"),
                            (":path", "/x.Y/Z"), ("content-type", "application/grpc")],
                        end_stream=True)  # fmt: skip
    data = client.data_to_send()
    t.client(data)
    server.receive_data(data)
    server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    t.server(server.data_to_send())
    t.closed("")
    assert [o.protocol for o in sink.opened] == ["http2"]
    (req,) = sink.requests
    assert (req.protocol, req.grpc_status, req.classification) == ("grpc", 0, "success")


@pytest.mark.parametrize("protocol", ["http1", "http2"])
def test_a_closed_tap_leaves_nothing_for_the_cycle_collector(protocol: str) -> None:
    """The observers' own cycles (parser <-> side, observer <-> frame readers) are broken when
    the connection ends, so a burst of connections does not wait for a full collection."""
    import gc

    gc.collect()
    gc.disable()
    try:
        sink = RecordingSink()
        t = tap(sink)
        if protocol == "http1":
            t.client(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
            t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            client, server = _h2_pair()
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                      (":authority", "api")], end_stream=True)  # fmt: skip
            t.client(client.data_to_send())
            t.server(server.data_to_send())
        t.closed("")
        assert sink.requests or protocol == "http2"
        del t
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_tapped_requests_carry_both_ports() -> None:
    from nodeagent.observe.sink import AgentSink
    from nodemesh.api import tap_pb2

    sink = AgentSink(node="node1")
    events: list[tap_pb2.TapEvent] = []
    sink.taps.emit = events.append
    sink.taps.start(
        tap_pb2.TapSubscription(
            id="tap-1", pods=[tap_pb2.PodRef(namespace="shop", name="web-1")], max_rps=10
        )
    )
    t = ConnectionTap(
        sink=sink, conn_id=3, direction="outbound", src=SRC, dst=DST, tls=True,
        dst_key=("10.96.0.10", 80), src_port=41234, dst_port=8080, call_later=Timers(),
    )  # fmt: skip
    t.client(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    t.closed("")
    assert [e.WhichOneof("kind") for e in events] == ["req", "rsp", "end"]
    for e in events:
        assert (e.src.ip, e.src.port, e.dst.ip, e.dst.port) == ("10.0.0.1", 41234, "10.0.0.2", 8080)
        assert (e.src.workload, e.dst.workload) == ("web", "api")


# Observe once: the destination pod as its own agent names it (no Service).
PEER = Peer("10.0.0.2", "shop", "api-1", "Deployment", "api")


def test_a_tap_that_parses_nothing_still_detects_and_counts_the_connection() -> None:
    sink = RecordingSink()
    t = tap(sink, direction="inbound", parse=False)
    t.client(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
    t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    t.closed("")
    assert sink.requests == [] and t.observer is None
    assert [o.protocol for o in sink.opened] == ["http1"]
    (closed,) = sink.closed
    assert (closed.protocol, closed.read_bytes, closed.write_bytes) == ("http1", 30, 40)


def test_the_source_reports_each_request_for_the_destination_too() -> None:
    sink = RecordingSink()
    t = tap(sink, for_peer=PEER)
    t.client(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
    time.sleep(0.01)
    t.server(b"HTTP/1.1 503 No\r\nContent-Length: 2\r\n\r\nno")
    t.client(b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    t.server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok")  # closed mid-answer
    t.closed("reset")
    out_a, in_a, out_b, in_b = sink.requests
    for mine, theirs in ((out_a, in_a), (out_b, in_b)):
        assert (mine.direction, mine.dst) == ("outbound", DST)
        assert (theirs.direction, theirs.dst, theirs.src) == ("inbound", PEER, SRC)
        assert theirs.req_id != mine.req_id
        same = ("conn_id", "protocol", "tls", "method", "authority", "path", "status",
                "grpc_status", "classification", "reset", "latency_first_byte_s", "latency_s",
                "request_bytes", "response_bytes", "started_at")  # fmt: skip
        assert [getattr(theirs, f) for f in same] == [getattr(mine, f) for f in same]
    assert (in_a.status, in_a.classification, in_a.response_bytes) == (503, "failure", 2)
    assert in_a.latency_first_byte_s is not None and in_a.latency_first_byte_s >= 0.01
    assert (in_b.method, in_b.request_bytes, in_b.reset) == ("POST", 3, True)
    assert len({r.req_id for r in sink.requests}) == 4


class _DestinationTapped(RecordingSink):
    """Someone taps the destination pod only: its inbound requests, not the source's."""

    def tapping(self, src: Peer, dst: Peer) -> bool:
        return dst is PEER

    def request_started(self, ev: RequestStarted) -> None:
        self.tapped.append(("request", (ev.req_id, ev.direction, ev.dst)))


def test_a_tap_on_the_destination_gets_the_requests_the_source_reports_for_it() -> None:
    sink = _DestinationTapped()
    t = tap(sink, for_peer=PEER)
    t.client(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
    t.server(b"HTTP/1.1 204 No Content\r\n\r\n")
    outbound, inbound = sink.requests
    assert sink.tapped == [
        ("request", (inbound.req_id, "inbound", PEER)),
        ("response", (inbound.req_id, 204)),
    ]
