"""HTTP/1.1 observer: what a user of the metrics would see for each kind of exchange."""

from __future__ import annotations

import pytest

from nodeagent.protocol.http1 import (
    CLIENT_TRANSITIONS,
    ConnectTunnel,
    ExchangeAborted,
    Http1Error,
    Http1Observer,
    ProtocolError,
    RequestEnded,
    RequestStarted,
    ResponseEnded,
    ResponseStarted,
    State,
    Trigger,
    Upgraded,
    _RequestSide,
)


def run(client: bytes, server: bytes, *, chunk: int | None = None) -> list[object]:
    """Feed the whole client stream, then the server stream, then close."""
    obs = Http1Observer()
    events: list[object] = []
    for data, feed in ((client, obs.feed_client), (server, obs.feed_server)):
        step = chunk or max(1, len(data))
        for i in range(0, len(data), step):
            events += feed(data[i : i + step])
    return events + obs.close()


def get(path: str, host: str = "web", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def ok(body: bytes = b"", status: int = 200) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return head + body


def test_keep_alive_sequence() -> None:
    obs = Http1Observer()
    assert obs.feed_client(get("/a")) == [
        RequestStarted(1, "GET", "web", "/a", "1.1"),
        RequestEnded(1, 0),
    ]
    assert obs.feed_server(ok(b"hello")) == [ResponseStarted(1, 200), ResponseEnded(1, 5)]
    assert obs.feed_client(get("/b?x=1")) == [
        RequestStarted(2, "GET", "web", "/b?x=1", "1.1"),
        RequestEnded(2, 0),
    ]
    assert obs.feed_server(ok(b"", 503)) == [ResponseStarted(2, 503), ResponseEnded(2, 0)]
    assert obs.close() == []


def test_pipelined_responses_match_requests_in_order() -> None:
    client = (
        get("/1") + get("/2") + b"POST /3 HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc"
    )
    server = ok(b"one", 200) + ok(b"", 404) + ok(b"three!", 500)
    events = run(client, server)
    starts = [(e.seq, e.status) for e in events if isinstance(e, ResponseStarted)]
    assert starts == [(1, 200), (2, 404), (3, 500)]
    ends = [(e.seq, e.body_bytes) for e in events if isinstance(e, ResponseEnded)]
    assert ends == [(1, 3), (2, 0), (3, 6)]
    assert RequestEnded(3, 3) in events


def test_chunked_bodies_both_ways() -> None:
    client = (
        b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
    )
    server = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    ) + ok(b"z")
    events = run(client + get("/next"), server, chunk=3)
    assert RequestEnded(1, 9) in events
    assert ResponseEnded(1, 3) in events
    assert ResponseEnded(2, 1) in events


def test_expect_100_continue_interim_is_not_the_response() -> None:
    obs = Http1Observer()
    head = b"PUT /big HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    assert obs.feed_client(head) == [RequestStarted(1, "PUT", "web", "/big", "1.1")]
    assert obs.feed_server(b"HTTP/1.1 100 Continue\r\n\r\n") == []
    assert obs.feed_client(b"data") == [RequestEnded(1, 4)]
    assert obs.feed_server(ok(b"", 201)) == [ResponseStarted(1, 201), ResponseEnded(1, 0)]


def test_head_response_has_no_body_despite_content_length() -> None:
    client = b"HEAD /file HTTP/1.1\r\nHost: web\r\n\r\n" + get("/after")
    server = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + ok(b"next")
    for chunk in (None, 1, 7):
        events = run(client, server, chunk=chunk)
        assert [e for e in events if isinstance(e, ResponseStarted | ResponseEnded)] == [
            ResponseStarted(1, 200),
            ResponseEnded(1, 0),
            ResponseStarted(2, 200),
            ResponseEnded(2, 4),
        ], chunk


def test_head_pipelined_behind_a_get_in_one_chunk() -> None:
    client = get("/a") + b"HEAD /b HTTP/1.1\r\nHost: web\r\n\r\n" + get("/c")
    server = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # HEAD: no chunks follow
        + ok(b"c!")
    )
    events = run(client, server)
    ends = [e for e in events if isinstance(e, ResponseEnded)]
    assert ends == [ResponseEnded(1, 2), ResponseEnded(2, 0), ResponseEnded(3, 2)]


def test_204_and_304_have_no_body() -> None:
    server = b"HTTP/1.1 204 No Content\r\n\r\n" + (
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\n\r\n"
    )
    events = run(get("/a") + get("/b") + get("/c"), server + ok(b"x"))
    assert [e for e in events if isinstance(e, ResponseEnded)] == [
        ResponseEnded(1, 0),
        ResponseEnded(2, 0),
        ResponseEnded(3, 1),
    ]
    assert not any(isinstance(e, ExchangeAborted) for e in events)


def test_websocket_upgrade_switches_to_tunnel() -> None:
    obs = Http1Observer()
    req = get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
    assert obs.feed_client(req + b"\x81\x85early") == [
        RequestStarted(1, "GET", "web", "/ws", "1.1"),
        RequestEnded(1, 0),
    ]
    resp = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert obs.feed_server(resp + b"\x81\x02hi") == [
        ResponseStarted(1, 101),
        ResponseEnded(1, 0),
        Upgraded(1, "websocket"),
    ]
    assert obs.tunnel
    # Frames are not HTTP any more and must not be parsed as such.
    assert obs.feed_client(b"\x88\x80garbage that is not HTTP") == []
    assert obs.feed_server(b"\x88\x00") == []
    assert obs.close() == []


def test_declined_upgrade_keeps_parsing_http() -> None:
    req = get("/ws", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n")
    events = run(req + get("/plain"), ok(b"no ws", 426) + ok(b"ok"))
    assert not any(isinstance(e, Upgraded) for e in events)
    assert RequestStarted(2, "GET", "web", "/plain", "1.1") in events
    assert ResponseEnded(2, 2) in events


def test_connect_tunnel() -> None:
    obs = Http1Observer()
    obs.feed_client(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n")
    events = obs.feed_server(b"HTTP/1.1 200 Connection Established\r\n\r\n\x00\x00\x00\x08")
    assert events == [
        ResponseStarted(1, 200),
        ResponseEnded(1, 0),
        ConnectTunnel(1, "db.internal:5432"),
    ]
    assert obs.tunnel


def test_refused_connect_is_a_normal_response() -> None:
    client = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"
    events = run(client, b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 3\r\n\r\nno!")
    assert events[-2:] == [ResponseStarted(1, 407), ResponseEnded(1, 3)]


def test_absolute_form_target() -> None:
    events = run(b"GET http://api.example:8080/v1/x HTTP/1.1\r\nHost: ignored\r\n\r\n", ok())
    assert events[0] == RequestStarted(1, "GET", "api.example:8080", "/v1/x", "1.1")


def test_response_delimited_by_close() -> None:
    events = run(get("/old"), b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert events[-1] == ResponseEnded(1, 13)


def test_close_mid_response_and_before_response() -> None:
    events = run(get("/a") + get("/b"), b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert events[-2:] == [
        ExchangeAborted(1, "response truncated"),
        ExchangeAborted(2, "no response"),
    ]


def test_response_without_request_is_an_error() -> None:
    obs = Http1Observer()
    with pytest.raises(Http1Error, match="no request outstanding"):
        obs.feed_server(ok())


def test_malformed_request_keeps_earlier_events() -> None:
    obs = Http1Observer()
    with pytest.raises(ProtocolError) as info:
        obs.feed_client(get("/fine") + b"G\x00T / HTTP/1.1\r\n\r\n")
    assert info.value.events == [
        RequestStarted(1, "GET", "web", "/fine", "1.1"),
        RequestEnded(1, 0),
    ]
    with pytest.raises(ProtocolError, match="already failed"):
        obs.feed_client(b"more")


def test_unsolicited_101_is_an_error() -> None:
    obs = Http1Observer()
    obs.feed_client(get("/"))
    with pytest.raises(Http1Error, match="101"):
        obs.feed_server(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )


def test_oversized_headers_are_refused() -> None:
    obs = Http1Observer()
    with pytest.raises(Http1Error, match="header section"):
        obs.feed_client(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000)


def test_transition_table_rejects_moves_it_does_not_list() -> None:
    side = _RequestSide(Http1Observer())
    assert (State.IDLE, Trigger.COMPLETE) not in CLIENT_TRANSITIONS
    with pytest.raises(Http1Error, match="COMPLETE not allowed in IDLE"):
        side.step(Trigger.COMPLETE)


def test_byte_at_a_time_gives_the_same_events() -> None:
    client = (
        get("/a")
        + b"POST /b HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        + b"HEAD /c HTTP/1.1\r\nHost: web\r\n\r\n"
    )
    server = ok(b"aaa") + ok(b"", 500) + b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    assert run(client, server, chunk=1) == run(client, server)
