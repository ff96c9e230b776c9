"""Hypothesis fuzzing of every parser in nodeagent.protocol.

Each test feeds arbitrary or mutated bytes (mutations of real traffic: h2 frames made by
the ``h2`` package, HTTP/1 exchanges, ClientHellos, preambles, DNS queries) and checks two
things: the only exception that escapes is the module's ProtocolError, and the events do
not depend on how the byte stream was cut into chunks.

CI runs a bounded number of examples per test (200 by default, no deadline). For a longer
hunt set NODEMESH_FUZZ_EXAMPLES, e.g.::

    NODEMESH_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/unit/agent/protocol/test_proto_fuzz.py -q

Failures are shrunk and stored in .hypothesis/ so a re-run replays them first.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_h2_peers import grpc_transcript

from nodeagent.protocol import dns, preamble
from nodeagent.protocol.detect import H2_PREFACE, Protocol, sniff
from nodeagent.protocol.errors import ProtocolError
from nodeagent.protocol.http1 import Http1Observer
from nodeagent.protocol.http2 import Http2Observer

EXAMPLES = int(os.environ.get("NODEMESH_FUZZ_EXAMPLES", "200"))
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Transcript = list[tuple[str, bytes]]

HTTP1_TRANSCRIPTS: list[Transcript] = [
    [
        ("c", b"GET /a HTTP/1.1\r\nHost: web\r\n\r\nHEAD /b HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
        ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"),
        (
            "c",
            b"POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        ("s", b"HTTP/1.1 500 X\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n"),
    ],
    [
        ("c", b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
        ("s", b"HTTP/1.1 100 Continue\r\n\r\n"),
        (
            "c",
            b"dataGET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        ("s", b"HTTP/1.1 204 No\r\n\r\nHTTP/1.1 101 Switching\r\nConnection: Upgrade\r\n"),
        ("s", b"Upgrade: websocket\r\n\r\n\x81\x02hi"),
        ("c", b"\x81\x82abcd"),
    ],
    [
        ("c", b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"),
        ("s", b"HTTP/1.1 407 Auth\r\nContent-Length: 1\r\n\r\nx"),
        ("c", b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"),
        ("s", b"HTTP/1.1 200 OK\r\n\r\n\x00\x01"),
    ],
    [
        ("c", b"GET http://x/y HTTP/1.0\r\n\r\n"),
        ("s", b"HTTP/1.0 200 OK\r\n\r\nuntil close"),
    ],
]
H2_TRANSCRIPTS: list[Transcript] = [grpc_transcript()]


def _client_hello() -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="svc.ns.svc.cluster.local")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


FIRST_BYTES = [
    _client_hello(),
    H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:1 HTTP/1.0\r\n",
]
PREAMBLES = [
    preamble.encode_preamble(
        preamble.Preamble(
            8080,
            ipaddress.ip_address("10.244.1.2"),
            Protocol.HTTP1,
            "emojivoto",
            "web-1",
            extensions=((9, b"ext"),),
        )
    ),
    preamble.encode_preamble(preamble.Preamble(53, ipaddress.ip_address("fd00::53"))),
]
DNS_QUERIES = [
    dns.build_query("web-svc.emojivoto.svc.cluster.local", dns.TYPE_A, query_id=1, edns=True),
    dns.build_query("example.com", dns.TYPE_AAAA, query_id=2),
    bytes(2)
    + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03www\x00\x00\x01\x00\x01"
    + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04",
]


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """A few flips, insertions, deletions or duplications applied to ``seed``."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "duplicate":
            end = min(len(data), pos + draw(st.integers(1, 32)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def byte_inputs(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=600),
        st.sampled_from(seeds).flatmap(mutated),
    )


@st.composite
def transcripts(draw: st.DrawFn, seeds: list[Transcript]) -> Transcript:
    base = draw(st.sampled_from(seeds))
    out: Transcript = []
    for side, data in base:
        out.append((side, draw(mutated(data)) if draw(st.booleans()) else data))
    if draw(st.booleans()):
        out.append((draw(st.sampled_from("cs")), draw(st.binary(max_size=64))))
    return out


def observe(
    make: Callable[[], Any], transcript: Transcript, cuts: list[int]
) -> tuple[list[object], str | None]:
    """Feed the transcript in chunks whose sizes cycle through ``cuts`` (empty: whole)."""
    obs = make()
    events: list[object] = []
    turn = 0
    try:
        for side, data in transcript:
            feed = obs.feed_client if side == "c" else obs.feed_server
            pos = 0
            while pos < len(data):
                size = cuts[turn % len(cuts)] if cuts else len(data)
                turn += 1
                events += feed(data[pos : pos + size])
                pos += size
        events += obs.close()
    except ProtocolError as exc:
        return events + exc.events, exc.reason
    return events, None


CUTS = st.lists(st.integers(1, 40), max_size=12)


@fuzz
@given(transcripts(HTTP1_TRANSCRIPTS), CUTS)
def test_http1_observer_is_robust_and_split_invariant(t: Transcript, cuts: list[int]) -> None:
    assert observe(Http1Observer, t, cuts) == observe(Http1Observer, t, [])


@fuzz
@given(transcripts(H2_TRANSCRIPTS), CUTS)
def test_http2_observer_is_robust_and_split_invariant(t: Transcript, cuts: list[int]) -> None:
    assert observe(Http2Observer, t, cuts) == observe(Http2Observer, t, [])


@fuzz
@given(st.lists(st.tuples(st.sampled_from("cs"), st.binary(max_size=200)), max_size=6), CUTS)
def test_observers_survive_pure_noise(t: Transcript, cuts: list[int]) -> None:
    for make in (Http1Observer, Http2Observer):
        assert observe(make, t, cuts) == observe(make, t, [])
    h2_noise = [("c", H2_PREFACE), *t]
    assert observe(Http2Observer, h2_noise, cuts) == observe(Http2Observer, h2_noise, [])


@fuzz
@given(byte_inputs(FIRST_BYTES))
def test_detection_never_raises_and_a_verdict_is_final(data: bytes) -> None:
    verdict = None
    for n in range(1, len(data) + 1):
        result = sniff(data[:n])
        if result.protocol is not None:
            verdict = result
            break
    final = sniff(data)
    if verdict is not None:
        assert (final.protocol, final.sni, final.alpn) == (
            verdict.protocol,
            verdict.sni,
            verdict.alpn,
        )


@fuzz
@given(byte_inputs(PREAMBLES))
def test_preamble_decoder_raises_only_preamble_errors(data: bytes) -> None:
    try:
        decoded, used = preamble.decode_preamble(data)
    except preamble.PreambleError:
        return
    # Re-encoding is stable (unknown protocol hints read back as None, nothing else changes).
    assert preamble.decode_preamble(preamble.encode_preamble(decoded))[0] == decoded
    assert used == preamble.preamble_size(data)


@fuzz
@given(
    st.integers(1, 65535),
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    st.sampled_from([None, *Protocol]),
    st.text(max_size=60),
    st.text(max_size=60),
    st.integers(0, 0xFFFF),
)
def test_preamble_round_trips(
    port: int, ip: Any, proto: Protocol | None, ns: str, pod: str, flags: int
) -> None:
    p = preamble.Preamble(port, ip, proto, ns, pod, preamble.PreambleFlags(flags))
    assert preamble.decode_preamble(preamble.encode_preamble(p)) == (
        p,
        len(preamble.encode_preamble(p)),
    )


@fuzz
@given(byte_inputs(DNS_QUERIES))
def test_dns_parser_raises_only_dns_errors(data: bytes) -> None:
    try:
        query = dns.parse_query(data)
    except dns.DnsError:
        return
    # Whatever parsed can be answered, and the answer parses back to the same question.
    answer = dns.build_response(query, addresses=[ipaddress.ip_address("10.0.0.1")])
    labels, _ = dns.read_name(answer, dns.HEADER_SIZE)
    assert labels == query.question.labels
