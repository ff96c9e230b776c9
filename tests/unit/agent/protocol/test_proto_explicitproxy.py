"""Router mode's requests (nodeagent.protocol.explicitproxy): what an HTTP_PROXY client sends, what
leaves for the origin server, and the clear answers for what cannot be proxied."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.protocol.explicitproxy import OriginForm, ProxyRequestError, answer, parse_head


def test_absolute_form_leaves_in_origin_form_without_proxy_headers() -> None:
    raw = (
        b"GET http://web-svc.emojivoto:80/api/list?x=1 HTTP/1.1\r\n"
        b"Host: web-svc.emojivoto:80\r\nProxy-Connection: Keep-Alive\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nAccept: */*\r\n\r\nleftover"
    )
    req = parse_head(raw)
    assert (req.connect, req.host, req.port) == (False, "web-svc.emojivoto", 80)
    assert req.head == (
        b"GET /api/list?x=1 HTTP/1.1\r\nHost: web-svc.emojivoto:80\r\nAccept: */*\r\n\r\n"
    )
    assert raw[req.consumed :] == b"leftover"


def test_the_host_header_is_the_targets_authority() -> None:
    req = parse_head(
        b"GET http://api.shop:8080/x HTTP/1.1\r\nAccept: */*\r\nHost: elsewhere\r\n"
        b"host: twice\r\n\r\n"
    )
    assert req.head == b"GET /x HTTP/1.1\r\nAccept: */*\r\nHost: api.shop:8080\r\n\r\n"


def test_a_missing_host_header_is_added_and_the_default_port_is_80() -> None:
    req = parse_head(b"GET http://Web-Svc.EmojiVoto HTTP/1.0\r\n\r\n")
    assert (req.host, req.port) == ("web-svc.emojivoto", 80)
    assert req.head == b"GET / HTTP/1.0\r\nHost: Web-Svc.EmojiVoto\r\n\r\n"


def test_connect_names_host_and_port() -> None:
    req = parse_head(b"CONNECT redis.cache.svc.cluster.local:6379 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (req.connect, req.host, req.port, req.head) == (
        True,
        "redis.cache.svc.cluster.local",
        6379,
        b"",
    )


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", "not a proxy request"),
        (b"GET https://web/ HTTP/1.1\r\n\r\n", "use CONNECT"),
        (b"CONNECT web HTTP/1.1\r\n\r\n", "CONNECT needs host:port"),
        (b"CONNECT web:99999 HTTP/1.1\r\n\r\n", "bad port '99999'"),
        (b"GET http://[::1]:80/ HTTP/1.1\r\n\r\n", "bad host"),
        (b"GET http://user@web/ HTTP/1.1\r\n\r\n", "bad host"),
        (b"hello\r\n\r\n", "bad request line"),
        (b"GET http://web/ SPDY/3\r\n\r\n", "bad request line"),
    ],
)
def test_what_cannot_be_proxied_is_a_400_naming_why(raw: bytes, says: str) -> None:
    with pytest.raises(ProxyRequestError) as err:
        parse_head(raw)
    assert err.value.status == 400
    assert says in err.value.reason


def test_answers_are_complete_http_responses_that_close() -> None:
    out = answer(502, "unknown host 'x'")
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == b"nodemesh router: unknown host 'x'\n"


def _through(gate: OriginForm, chunks: list[bytes]) -> tuple[bytes, bool]:
    out, closed = b"", False
    for c in chunks:
        data, reply, close = gate.client(c)
        assert reply == b""
        out += data
        closed = closed or close
    return out, closed


def test_later_requests_are_rewritten_and_bodies_pass_untouched() -> None:
    # The first head arrives already rewritten (by the router), then a keep-alive client's next
    # requests: a body that looks like a request line must not be rewritten.
    body = b"GET http://evil/ HTTP/1.1\r\n\r\n"
    stream = (
        b"POST /vote HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET http://web:80/a HTTP/1.1\r\nHost: web\r\n\r\n"
        + b"PUT http://web/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5\r\nGET h\r\n0\r\nX-T: 1\r\n\r\n"
        + b"GET http://web/d HTTP/1.1\r\n\r\n"
    )
    expected = (
        b"POST /vote HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"GET /a HTTP/1.1\r\nHost: web:80\r\n\r\n"
        + b"PUT /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"5\r\nGET h\r\n0\r\nX-T: 1\r\n\r\n"
        + b"GET /d HTTP/1.1\r\nHost: web\r\n\r\n"
    )
    whole = OriginForm(host="web", port=80)
    assert _through(whole, [stream]) == (expected, False)
    assert whole.requests == 4
    # The same bytes cut anywhere give the same result.
    for cut in range(1, len(stream), 7):
        assert _through(OriginForm(host="web", port=80), [stream[:cut], stream[cut:]]) == (
            expected,
            False,
        )


def test_a_request_for_another_host_ends_the_connection_after_the_earlier_ones() -> None:
    gate = OriginForm(host="web", port=80)
    out, closed = _through(
        gate, [b"GET / HTTP/1.1\r\n\r\nGET http://other/ HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n"]
    )
    assert (out, closed) == (b"GET / HTTP/1.1\r\n\r\n", True)
    assert gate.client(b"more") == (b"", b"", True)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_any_bytes_never_raise(data: bytes, cut: int) -> None:
    gate = OriginForm(host="web", port=80)
    for i in range(0, len(data), cut):
        gate.client(data[i : i + cut])
    try:
        parse_head(data + b"\r\n\r\n")
    except ProxyRequestError as exc:
        assert exc.status == 400


def test_a_router_service_routes_an_origin_form_request_by_its_host_header() -> None:
    raw = b"GET /api?x=1 HTTP/1.1\r\nAccept: */*\r\nHOST: Echo.NS\r\n\r\nbody"
    req = parse_head(raw, host_routed=True)
    assert (req.connect, req.host, req.port, req.port_given) == (False, "echo.ns", 80, False)
    assert req.head == raw[: req.consumed]  # it goes upstream as it came
    assert (req.method, req.path) == ("GET", "/api?x=1")
    with_port = parse_head(b"GET / HTTP/1.1\r\nHost: echo.ns:8080\r\n\r\n", host_routed=True)
    assert (with_port.port, with_port.port_given) == (8080, True)
    # The explicit-proxy shapes work there too (http_proxy=http://router.infra:4140).
    assert parse_head(b"GET http://echo.ns/ HTTP/1.1\r\n\r\n", host_routed=True).host == "echo.ns"


def test_a_router_service_request_without_host_is_a_400_naming_it() -> None:
    with pytest.raises(ProxyRequestError) as err:
        parse_head(b"GET / HTTP/1.0\r\n\r\n", host_routed=True)
    assert err.value.status == 400
    assert "no Host header" in err.value.reason


def test_a_host_routed_connection_ends_at_a_request_for_another_host() -> None:
    gate = OriginForm(host="echo.ns", port=80, host_routed=True)
    first = b"GET /a HTTP/1.1\r\nHost: echo.ns\r\n\r\n"
    assert gate.client(first) == (first, b"", False)
    again = b"POST /b HTTP/1.1\r\nHost: echo.ns:80\r\nContent-Length: 3\r\n\r\nxyz"
    assert gate.client(again) == (again, b"", False)
    assert gate.client(b"GET / HTTP/1.1\r\nHost: other.ns\r\n\r\n") == (b"", b"", True)
