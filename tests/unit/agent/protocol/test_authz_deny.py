"""The agent's own answers to a client the policy denies: real HTTP/1 parsing and a real HTTP/2
client (the h2 library) on the other end see a 403 per request, or a trailers-only gRPC
PERMISSION_DENIED per call, on a connection that stays usable."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import httptools
import pytest

from nodeagent.protocol.authz_deny import DenyError, H2DenyAll, Http1DenyAll

REASON = "spiffe://cluster.local/ns/x/sa/bot not allowed by emojivoto/emoji (default deny)"


class Responses:
    """httptools on the client side: the responses an HTTP/1 client reads."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


def test_http1_every_request_gets_403_and_the_connection_stays_open_when_kept_alive() -> None:
    deny = Http1DenyAll(REASON)
    client = Responses()
    # Two pipelined requests (one with a body) split mid-way, as TCP may deliver them.
    wire = (
        b"POST /api/vote?choice=1 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /healthz HTTP/1.1\r\nHost: web\r\n\r\n"
    )
    out = deny.feed(wire[:20]) + deny.feed(wire[20:])
    client.parser.feed_data(out)
    assert [(s, h[b"connection"]) for s, h, _ in client.done] == [
        (403, b"keep-alive"),
        (403, b"keep-alive"),
    ]
    assert REASON.encode() in client.done[0][2]
    assert [(d.method, d.path) for d in deny.take_denied()] == [
        ("POST", "/api/vote?choice=1"),
        ("GET", "/healthz"),
    ]
    assert not deny.done
    out = deny.feed(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert b"connection: close" in out and deny.done


def test_http1_garbage_is_refused() -> None:
    with pytest.raises(DenyError):
        Http1DenyAll(REASON).feed(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n\x00\x01")


def _client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def _exchange(deny: H2DenyAll, conn: h2.connection.H2Connection) -> list[h2.events.Event]:
    events = []
    for _ in range(5):  # until both sides have nothing more to say
        data = conn.data_to_send()
        if not data:
            break
        events += conn.receive_data(deny.feed(data))
    return events


def test_h2_grpc_calls_get_trailers_only_permission_denied_and_others_403() -> None:
    deny = H2DenyAll(REASON + " – ünïcode")
    conn = _client()
    grpc_headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/emojivoto.v1.EmojiService/ListAll"),
        (":authority", "emoji-svc:8080"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    for sid in (1, 3):
        conn.send_headers(sid, grpc_headers)
        conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    conn.send_headers(
        5,
        [(":method", "GET"), (":scheme", "http"), (":path", "/x"), (":authority", "a")],
        end_stream=True,
    )
    events = _exchange(deny, conn)
    responses = {
        e.stream_id: dict((k.decode(), v.decode()) for k, v in e.headers)
        for e in events
        if isinstance(e, h2.events.ResponseReceived)
    }
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert ended == {1, 3, 5}
    for sid in (1, 3):
        assert responses[sid][":status"] == "200"
        assert responses[sid]["grpc-status"] == "7"
        assert "not allowed by emojivoto/emoji" in responses[sid]["grpc-message"]
        assert "%C3%BC" in responses[sid]["grpc-message"]  # percent-encoded, as gRPC wants
    assert responses[5][":status"] == "403"
    assert [(d.path, d.grpc) for d in deny.take_denied()] == [
        ("/emojivoto.v1.EmojiService/ListAll", True),
        ("/emojivoto.v1.EmojiService/ListAll", True),
        ("/x", False),
    ]
    # The connection is still good: a ping is answered, a later call is answered too.
    conn.ping(b"12345678")
    conn.send_headers(7, grpc_headers, end_stream=True)
    events = _exchange(deny, conn)
    assert any(isinstance(e, h2.events.PingAckReceived) for e in events)
    assert any(isinstance(e, h2.events.ResponseReceived) and e.stream_id == 7 for e in events)


def test_h2_bodies_do_not_exhaust_the_connection_window() -> None:
    deny = H2DenyAll(REASON)
    conn = _client()
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/up"), (":authority", "a")]
    sid = 1
    for _ in range(6):  # 6 x 16 KiB > the 64 KiB initial connection window
        conn.send_headers(sid, headers)
        conn.send_data(sid, b"x" * 16384, end_stream=True)
        _exchange(deny, conn)
        sid += 2
    assert conn.outbound_flow_control_window >= 65535 - 16384
    assert len(deny.take_denied()) == 6


def test_h2_a_wrong_preface_is_refused() -> None:
    with pytest.raises(DenyError):
        H2DenyAll(REASON).feed(b"PRI * HTTP/1.1\r\n")
