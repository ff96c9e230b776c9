"""DNS parsing and answers, checked byte by byte against hand-built packets."""

from __future__ import annotations

import ipaddress

import pytest

from nodeagent.protocol.dns import (
    FORMERR,
    NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_SOA,
    DnsError,
    ServiceName,
    build_error,
    build_query,
    build_response,
    frame_tcp,
    parse_query,
    read_name,
    service_name,
)

QNAME = b"\x07web-svc\x09emojivoto\x03svc\x07cluster\x05local\x00"
# id 0xbeef, RD, one question, one additional (OPT: udp 4096, DO bit set)
QUERY_A = (
    b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
    + QNAME
    + b"\x00\x01\x00\x01"
    + b"\x00\x00\x29\x10\x00\x00\x00\x80\x00\x00\x00"
)


def u16(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 2], "big")


def test_parse_query_with_edns() -> None:
    q = parse_query(QUERY_A)
    assert q.id == 0xBEEF and q.opcode == 0 and q.recursion_desired
    assert q.question.name == "web-svc.emojivoto.svc.cluster.local"
    assert (q.question.qtype, q.question.qclass) == (TYPE_A, 1)
    assert q.opt is not None
    assert (q.opt.udp_size, q.opt.version, q.opt.dnssec_ok, q.opt.options) == (4096, 0, True, b"")


def test_a_answer_bytes() -> None:
    q = parse_query(QUERY_A)
    addrs = [ipaddress.ip_address("10.96.0.20"), ipaddress.ip_address("fd00::1")]
    r = build_response(q, addresses=addrs, ttl=30)
    assert r[:2] == b"\xbe\xef"
    assert u16(r, 2) == 0x8580  # QR AA RD RA, NOERROR
    assert [u16(r, i) for i in (4, 6, 8, 10)] == [1, 1, 0, 1]
    question_end = 12 + len(QNAME) + 4
    assert r[12:question_end] == QNAME + b"\x00\x01\x00\x01"
    answer = r[question_end : question_end + 16]
    assert answer == b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\x0a\x60\x00\x14"
    opt = r[question_end + 16 :]
    assert opt == b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"  # 1232, DO echoed


def test_aaaa_answer_and_nodata() -> None:
    query = bytearray(QUERY_A)
    query[12 + len(QNAME) + 1] = TYPE_AAAA
    q = parse_query(bytes(query))
    r = build_response(q, addresses=[ipaddress.ip_address("fd00::1")])
    assert u16(r, 6) == 1 and r.endswith(
        b"\x00\x10"
        + ipaddress.ip_address("fd00::1").packed
        + b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"
    )
    nodata = build_response(
        q, addresses=[ipaddress.ip_address("10.0.0.1")], negative_zone="cluster.local"
    )
    assert u16(nodata, 2) & 0xF == 0 and [u16(nodata, i) for i in (6, 8)] == [0, 1]


def test_nxdomain_carries_the_zone_soa() -> None:
    q = parse_query(build_query("nope.emojivoto.svc.cluster.local", query_id=7))
    r = build_response(q, rcode=NXDOMAIN, negative_zone="cluster.local", ttl=5)
    assert u16(r, 2) & 0xF == NXDOMAIN
    assert [u16(r, i) for i in (4, 6, 8, 10)] == [1, 0, 1, 0]
    soa_at = 12 + len(b"\x04nope\x09emojivoto\x03svc\x07cluster\x05local\x00") + 4
    labels, pos = read_name(r, soa_at)
    assert labels == (b"cluster", b"local")
    assert u16(r, pos) == TYPE_SOA
    assert r.endswith((5).to_bytes(4, "big"))  # minimum TTL = negative caching time


def test_compressed_names_are_followed() -> None:
    # header, then "example.com" at 12, "www" + pointer at 25, "a" + pointer to 25 at 31
    msg = bytes(12) + b"\x07example\x03com\x00" + b"\x03www\xc0\x0c" + b"\x01a\xc0\x19"
    assert read_name(msg, 12) == ((b"example", b"com"), 25)
    assert read_name(msg, 25) == ((b"www", b"example", b"com"), 31)
    assert read_name(msg, 31) == ((b"a", b"www", b"example", b"com"), 35)


def test_pointer_in_an_additional_record_is_parsed() -> None:
    msg = (
        b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x02"
        + QNAME
        + b"\x00\x01\x00\x01"
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01\x02\x03\x04"  # glue-like A
        + b"\x00\x00\x29\x02\x00\x00\x00\x00\x00\x00\x00"
    )
    q = parse_query(msg)
    assert q.opt is not None and q.opt.udp_size == 512 and not q.opt.dnssec_ok


@pytest.mark.parametrize(
    "msg",
    [
        bytes(12) + b"\xc0\x0c",  # points at itself
        bytes(12) + b"\xc0\x0e\xc0\x0c",  # forward, then back: a loop
        bytes(12) + b"\x01a\xc0\x0c",  # points at the start of its own name
        bytes(12) + b"\x05ab",  # label runs off the end
        bytes(12) + b"\xc0",  # half a pointer
        bytes(12) + b"\x80\x00",  # reserved label type
        bytes(12) + (b"\x3f" + b"a" * 63) * 4 + b"\x00",  # 257-byte name
    ],
)
def test_bad_names_raise_cleanly(msg: bytes) -> None:
    with pytest.raises(DnsError):
        read_name(msg, 12)


def test_errors_keep_the_query_id_for_a_formerr_reply() -> None:
    two_questions = b"\x12\x34\x01\x00\x00\x02" + bytes(6) + QNAME + b"\x00\x01\x00\x01" * 2
    with pytest.raises(DnsError) as info:
        parse_query(two_questions)
    assert info.value.query_id == 0x1234
    reply = build_error(info.value.query_id, FORMERR)
    assert reply == b"\x12\x34\x80\x81" + bytes(8)
    with pytest.raises(DnsError, match="response"):
        parse_query(b"\x00\x01\x80\x00" + bytes(8))
    with pytest.raises(DnsError, match="header"):
        parse_query(b"\x00\x01")
    with pytest.raises(DnsError, match="question type"):
        parse_query(QUERY_A[: 12 + len(QNAME) + 1])


def test_large_answer_without_edns_is_truncated() -> None:
    q = parse_query(build_query("big.ns.svc.cluster.local"))
    addrs = [ipaddress.ip_address(f"10.1.{i // 250}.{i % 250}") for i in range(40)]
    r = build_response(q, addresses=addrs)
    assert len(r) <= 512 and u16(r, 2) & 0x0200 and u16(r, 6) == 0
    # With EDNS the same answer fits.
    q2 = parse_query(build_query("big.ns.svc.cluster.local", edns=True))
    r2 = build_response(q2, addresses=addrs)
    assert not u16(r2, 2) & 0x0200 and u16(r2, 6) == 40


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web-svc.emojivoto.svc.cluster.local", ServiceName("web-svc", "emojivoto")),
        ("Web-Svc.Emojivoto.SVC.cluster.local.", ServiceName("web-svc", "emojivoto")),
        ("pod-0.db.data.svc.cluster.local", ServiceName("db", "data", "pod-0")),
        ("emojivoto.svc.cluster.local", None),
        ("a.b.c.d.svc.cluster.local", None),
        ("web-svc.emojivoto.svc.cluster.local.emojivoto.svc.cluster.local", None),
        ("example.com", None),
        ("web.ns.svc.other.domain", None),
    ],
)
def test_service_names(name: str, expected: ServiceName | None) -> None:
    assert service_name(name) == expected


def test_custom_cluster_domain_and_tcp_framing() -> None:
    assert service_name("a.b.svc.corp.example", "corp.example") == ServiceName("a", "b")
    assert frame_tcp(b"\x01\x02\x03") == b"\x00\x03\x01\x02\x03"
