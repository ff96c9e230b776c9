"""Protocol detection: first bytes, TLS ClientHello fields, and the relay decision."""

from __future__ import annotations

import ssl

import pytest

from nodeagent.protocol.detect import (
    H2_PREFACE,
    KNOWN_OPAQUE_PORTS,
    MAX_PEEK,
    Protocol,
    ServerFirstMemory,
    decide,
    sniff,
)


def client_hello(server_name: str | None, alpn: list[str] | None = None) -> bytes:
    """A real ClientHello, produced by the ssl module's own client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    "first",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /vote HTTP/1.0\r\n",
        b"CONNECT db:5432 HTTP/1.1\r\n",
        b"DELETE /x?y=1 HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
    ],
)
def test_http1_request_lines(first: bytes) -> None:
    assert sniff(first).protocol is Protocol.HTTP1


@pytest.mark.parametrize(
    "prefix",
    [b"G", b"GE", b"GET", b"GET ", b"GET /path", b"GET /path HTTP/1", b"GET / HTTP/1.1\r"],
)
def test_http1_prefixes_need_more(prefix: bytes) -> None:
    assert sniff(prefix).protocol is None


@pytest.mark.parametrize(
    "first",
    [
        b"PRI * HTTP/1.1\r\n",  # PRI is the h2 preface's method, never HTTP/1
        b"FOO / HTTP/1.1\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET /a\x00b HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
        b"get / HTTP/1.1\r\n",
    ],
)
def test_not_http_is_opaque(first: bytes) -> None:
    assert sniff(first).protocol is Protocol.OPAQUE


def test_h2_preface_and_its_prefixes() -> None:
    assert sniff(H2_PREFACE + b"\x00\x00\x00\x04").protocol is Protocol.HTTP2
    for n in range(1, len(H2_PREFACE)):
        assert sniff(H2_PREFACE[:n]).protocol is None, n
    assert sniff(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").protocol is Protocol.OPAQUE


def test_tls_client_hello_sni_and_alpn() -> None:
    hello = client_hello("Web-Svc.Emojivoto.svc.cluster.local", ["h2", "http/1.1"])
    result = sniff(hello)
    assert result.protocol is Protocol.TLS
    assert result.sni == "web-svc.emojivoto.svc.cluster.local"
    assert result.alpn == ("h2", "http/1.1")


def test_tls_without_sni() -> None:
    result = sniff(client_hello(None))
    assert result.protocol is Protocol.TLS
    assert result.sni is None and result.alpn == ()


def test_partial_client_hello_needs_more_at_every_cut() -> None:
    hello = client_hello("a.example", ["h2"])
    for n in range(1, len(hello)):
        assert sniff(hello[:n]).protocol is None, n
    assert sniff(hello).sni == "a.example"


def test_client_hello_split_over_two_records() -> None:
    hello = client_hello("split.example", ["http/1.1"])
    handshake = hello[5:]
    cut = 40
    records = b""
    for part in (handshake[:cut], handshake[cut:]):
        records += b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
    result = sniff(records)
    assert (result.protocol, result.sni, result.alpn) == (
        Protocol.TLS,
        "split.example",
        ("http/1.1",),
    )
    assert sniff(records[: 5 + cut + 7]).protocol is None


def test_early_data_behind_the_hello_does_not_matter() -> None:
    hello = client_hello("zero.rtt")
    assert sniff(hello + b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x05hello").sni == "zero.rtt"


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",  # a ServerHello, not a ClientHello
        b"\x16\x05\x01",  # record version 5.x
        b"\x16\x03\x01\x00\x00",  # empty handshake record
        b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # body too short
    ],
)
def test_malformed_tls_is_opaque(data: bytes) -> None:
    assert sniff(data).protocol is Protocol.OPAQUE


def hand_hello(extensions: bytes) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(extensions).to_bytes(2, "big") + extensions
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def sni_extension(name: bytes, *, name_len: int | None = None) -> bytes:
    entry = b"\x00" + (len(name) if name_len is None else name_len).to_bytes(2, "big") + name
    data = len(entry).to_bytes(2, "big") + entry
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def test_hand_built_hello() -> None:
    assert sniff(hand_hello(sni_extension(b"hand.example."))).sni == "hand.example"


def test_sni_length_overrunning_its_extension_is_opaque() -> None:
    result = sniff(hand_hello(sni_extension(b"hand.example", name_len=200)))
    assert result.protocol is Protocol.OPAQUE
    assert "ClientHello" in result.reason


# decide()


@pytest.mark.parametrize("port", sorted(KNOWN_OPAQUE_PORTS))
def test_known_opaque_ports_decide_before_any_byte(port: int) -> None:
    d = decide(b"", dst_ip="10.0.0.1", dst_port=port)
    assert (d.protocol, d.need_more) == (Protocol.OPAQUE, False)


def test_pod_opaque_ports() -> None:
    d = decide(b"GET / HTTP/1.1\r\n", dst_ip="10.0.0.1", dst_port=8000, pod_opaque_ports={8000})
    assert d.protocol is Protocol.OPAQUE
    assert decide(b"", dst_ip="10.0.0.1", dst_port=8001, pod_opaque_ports={8000}).need_more


def test_waits_for_bytes_then_decides() -> None:
    first = decide(b"", dst_ip="10.0.0.1", dst_port=80)
    assert first.need_more and first.protocol is None
    partial = decide(b"GET /", dst_ip="10.0.0.1", dst_port=80)
    assert partial.need_more
    done = decide(b"GET / HTTP/1.1\r\n", dst_ip="10.0.0.1", dst_port=80)
    assert (done.protocol, done.need_more) == (Protocol.HTTP1, False)
    tls = decide(client_hello("svc.ns"), dst_ip="10.0.0.1", dst_port=443)
    assert (tls.protocol, tls.sni) == (Protocol.TLS, "svc.ns")


def test_a_silent_client_proves_nothing_about_the_server() -> None:
    memory = ServerFirstMemory(capacity=8, ttl=60)
    d = decide(b"", dst_ip="10.0.0.9", dst_port=8080, timed_out=True, server_first=memory)
    # Still undecided (the relay never waits for detection), and nothing remembered.
    assert (d.protocol, d.need_more, d.remember_server_first) == (None, True, False)
    late = decide(b"GET / HTTP/1.1\r\n", dst_ip="10.0.0.9", dst_port=8080, timed_out=True)
    assert late.protocol is Protocol.HTTP1


def test_remembered_server_first_destinations_skip_detection_until_the_ttl() -> None:
    memory = ServerFirstMemory(capacity=8, ttl=60)
    memory.remember("10.0.0.9", 2525, now=100.0)
    again = decide(b"", dst_ip="10.0.0.9", dst_port=2525, server_first=memory, now=110.0)
    assert (again.protocol, again.need_more) == (Protocol.OPAQUE, False)
    assert again.cause == "remembered_server_first"
    # Another port of the same host is not affected.
    assert decide(b"", dst_ip="10.0.0.9", dst_port=80, server_first=memory, now=110.0).need_more
    # After the TTL the destination gets detection again.
    assert decide(b"", dst_ip="10.0.0.9", dst_port=2525, server_first=memory, now=161.0).need_more


def test_server_spoke_first() -> None:
    d = decide(b"", dst_ip="10.0.0.2", dst_port=2525, server_spoke_first=True,
               server_bytes=b"220 mail ESMTP\r\n")  # fmt: skip
    assert (d.protocol, d.remember_server_first) == (Protocol.OPAQUE, True)
    # An HTTP response to no request (a 408 on an idle connection) is no banner.
    d = decide(b"", dst_ip="10.0.0.2", dst_port=80, server_spoke_first=True,
               server_bytes=b"HTTP/1.1 408 Request Timeout\r\n")  # fmt: skip
    assert (d.protocol, d.remember_server_first) == (Protocol.OPAQUE, False)


def test_timeout_with_partial_prefix_is_opaque_but_not_remembered() -> None:
    d = decide(b"GET /lo", dst_ip="10.0.0.1", dst_port=80, timed_out=True)
    assert (d.protocol, d.need_more, d.remember_server_first) == (Protocol.OPAQUE, False, False)


def test_endless_request_line_gives_up_at_max_peek() -> None:
    d = decide(b"GET /" + b"a" * MAX_PEEK, dst_ip="10.0.0.1", dst_port=80)
    assert (d.protocol, d.need_more) == (Protocol.OPAQUE, False)


def test_memory_is_a_bounded_lru() -> None:
    memory = ServerFirstMemory(capacity=2, ttl=60)
    memory.remember("a", 1, now=0)
    memory.remember("b", 1, now=0)
    assert memory.seen("a", 1, now=1)  # refreshes "a"
    memory.remember("c", 1, now=1)  # evicts "b", the least recently used
    assert len(memory) == 2
    assert memory.seen("a", 1, now=2) and memory.seen("c", 1, now=2)
    assert not memory.seen("b", 1, now=2)
