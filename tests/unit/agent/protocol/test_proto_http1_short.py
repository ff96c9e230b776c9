"""The HTTP/1 observer's short way (whole simple messages read without llhttp) against llhttp.

With `SHORT_WAY` off every byte goes through llhttp and its callbacks, the reference. The
short way must give exactly the same events, the same errors (with the same events kept) and
the same events at close, for any input cut at any point, and must be the way the commonest
exchanges actually take (else it is dead code that costs a regex per read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.protocol import http1
from nodeagent.protocol.http1 import Http1Error, Http1Observer, RequestStarted, ResponseEnded


@contextmanager
def short_way(on: bool) -> Iterator[None]:
    saved = http1.SHORT_WAY
    http1.SHORT_WAY = on
    try:
        yield
    finally:
        http1.SHORT_WAY = saved


def observe(steps: list[tuple[str, bytes]]) -> list[Any]:
    """Everything an observer reports for these feeds, an error included, then its close."""
    obs = Http1Observer()
    seen: list[Any] = []
    for side, data in steps:
        feed = obs.feed_client if side == "c" else obs.feed_server
        try:
            seen.append(feed(data))
        except Http1Error as exc:
            seen.append(("error", exc.reason, exc.events))
            return seen
    seen.append(("close", obs.close(), obs.tunnel))
    return seen


def both(steps: list[tuple[str, bytes]]) -> list[Any]:
    with short_way(False):
        reference = observe(steps)
    with short_way(True):
        short = observe(steps)
    assert short == reference
    return short


# --- what llhttp takes and what the short way takes, byte by byte ------------------------------


@pytest.mark.parametrize("byte", range(256))
def test_any_byte_in_any_place_reads_the_same(byte: int) -> None:
    b = bytes([byte])
    places = [
        b"GET /a" + b + b"b HTTP/1.1\r\nHost: web\r\n\r\n",  # the target
        b"GET /a HTTP/1.1\r\nX-" + b + b": v\r\nHost: web\r\n\r\n",  # a field name
        b"GET /a HTTP/1.1\r\nHost: w" + b + b"b\r\n\r\n",  # a field value
        b"GET /a HTTP/1.1\r\nHost:" + b + b"web\r\n\r\n",  # before a value
        b"GET /a HTTP/1.1\r\nHost: web" + b + b"\r\n\r\n",  # after a value
        b"G" + b + b"T /a HTTP/1.1\r\n\r\n",  # the method
        b"GET /a HTTP/1." + b + b"\r\n\r\n",  # the version
        b"GET /a HTTP/1.1\r\nContent-Length: 1" + b + b"\r\n\r\nxyzxyzxyzxyz",
    ]
    for request in places:
        both([("c", request), ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")])
    responses = [
        b"HTTP/1.1 200 O" + b + b"K\r\nContent-Length: 2\r\n\r\nhi",  # the reason
        b"HTTP/1.1 2" + b + b"0 OK\r\nContent-Length: 2\r\n\r\nhi",  # the status
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: " + b + b"\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nContent-Length:" + b + b"2\r\n\r\nhi",
        b"HTTP/1.1 200" + b + b"\r\nContent-Length: 2\r\n\r\nhi",
    ]
    for response in responses:
        both([("c", b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"), ("s", response)])


def test_simple_exchanges_take_the_short_way() -> None:
    """llhttp sees nothing of a keep-alive POST and its 200, nor of pipelined GETs."""

    class NoParser:
        def feed_data(self, data: bytes) -> None:
            raise AssertionError(f"llhttp was fed {data[:40]!r}")

    obs = Http1Observer()
    obs.request.parser = NoParser()  # type: ignore[assignment]
    obs.response.parser = NoParser()  # type: ignore[assignment]
    post = b"POST /api/vote HTTP/1.1\r\nHost: web:80\r\nContent-Length: 3\r\n\r\nabc"
    got = obs.feed_client(post + b"GET /b HTTP/1.1\r\nhost: other\r\nAccept: */*\r\n\r\n")
    assert got[0] == RequestStarted(1, "POST", "web:80", "/api/vote", "1.1")
    assert got[2] == RequestStarted(2, "GET", "other", "/b", "1.1")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nabcd"
    assert obs.feed_server(answer + answer)[-1] == ResponseEnded(2, 4)
    assert obs.close() == []


def test_a_message_cut_across_reads_goes_to_llhttp_whole() -> None:
    request = b"GET /a HTTP/1.1\r\nHost: web\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    for cut in range(1, len(response)):
        both(
            [
                ("c", request + request[:cut]),
                ("c", request[cut:]),
                ("s", response + response[:cut]),
                ("s", response[cut:]),
            ]
        )


# --- any mix of messages, cut anywhere ---------------------------------------------------------

SIMPLE_FIELDS = st.lists(
    st.sampled_from(
        [
            b"Host: web",
            b"host:web:8080",
            b"Accept: */*",
            b"X-Empty:",
            b"X-Trail: v \t",
            b"Connection: keep-alive",
            b"User-Agent: hey/0.0.1",
        ]
    ),
    max_size=4,
)
ODD_FIELDS = st.sampled_from(
    [
        b"Connection: close",
        b"Connection: upgrade",
        b"Upgrade: websocket",
        b"Transfer-Encoding: chunked",
        b"Expect: 100-continue",
        b"Content-Length: 2",
        b"Content-Length: x",
        b"X-Fold: a\r\n b",
        b"X-Obs: \xe9t\xe9",
        b"Bad Name: v",
        b"X:\x00",
        b"Upgrade: websocket\r\nConnection: Upgrade",
        b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings",
    ]
)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    method = draw(
        st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"OPTIONS"])
    )
    target = draw(st.sampled_from([b"/", b"/a?b=c", b"/%7e~!$&'()*+,;=:@", b"http://h/x", b"*"]))
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"]))
    fields = draw(SIMPLE_FIELDS)
    for _ in range(draw(st.sampled_from([0] * 4 + [1, 2]))):
        fields.insert(draw(st.integers(0, len(fields))), draw(ODD_FIELDS))
    body = draw(st.sampled_from([b"", b"x", b"0123456789" * 20]))
    if body:
        fields.append(b"Content-Length: %d" % len(body))
    if b"Transfer-Encoding: chunked" in fields:
        fields = [f for f in fields if not f.startswith(b"Content-Length")]
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    head = method + b" " + target + b" " + version + b"\r\n"
    return head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


@st.composite
def response(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([200] * 5 + [201, 404, 503, 100, 101, 204, 304, 599]))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Not Found"]))
    fields = draw(SIMPLE_FIELDS)
    for _ in range(draw(st.sampled_from([0] * 4 + [1, 2]))):
        fields.insert(draw(st.integers(0, len(fields))), draw(ODD_FIELDS))
    body = draw(st.sampled_from([b"", b"y", b"abcdefgh" * 30]))
    framing = draw(st.sampled_from(["length"] * 5 + ["chunked", "close"]))
    if framing == "length" and not any(f.startswith(b"Content-Length") for f in fields):
        fields.append(b"Content-Length: %d" % len(body))
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    head = b"HTTP/1.1 %d%s\r\n" % (status, reason)
    return head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False) if b > a]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    exchanges=st.lists(st.tuples(request(), response()), min_size=1, max_size=5),
    client_cuts=st.lists(st.integers(0, 4000), max_size=4),
    server_cuts=st.lists(st.integers(0, 4000), max_size=4),
    interleaved=st.booleans(),
)
def test_same_events_as_llhttp_for_any_mix_cut_anywhere(
    exchanges: list[tuple[bytes, bytes]],
    client_cuts: list[int],
    server_cuts: list[int],
    interleaved: bool,
) -> None:
    steps: list[tuple[str, bytes]] = []
    if interleaved:  # each answer after its request, as a relay sees a client that waits
        for req, resp in exchanges:
            steps += [("c", piece) for piece in cut(req, client_cuts)]
            steps += [("s", piece) for piece in cut(resp, server_cuts)]
    else:  # pipelined: every request, then every answer
        client = b"".join(req for req, _ in exchanges)
        server = b"".join(resp for _, resp in exchanges)
        steps = [("c", p) for p in cut(client, client_cuts)]
        steps += [("s", p) for p in cut(server, server_cuts)]
    both(steps)
