"""Minimal DNS messages for the agent's resolver on port 4153 (RFC 1035, EDNS per RFC 6891).

Enough to parse a query, answer ``*.svc.<cluster-domain>`` names with A/AAAA records or a
negative answer, and hand everything else to the forwarder untouched. Stdlib only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from nodeagent.protocol.errors import ProtocolError

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA, TYPE_OPT = 1, 2, 5, 6, 28, 41
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

HEADER_SIZE = 12
MAX_NAME = 255
MAX_LABEL = 63
UDP_PLAIN_LIMIT = 512  # without EDNS a UDP answer must fit here (RFC 1035 4.2.1)
EDNS_UDP_SIZE = 1232  # the size the DNS flag day 2020 settled on
_MAX_POINTERS = 32

_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_DO = 0x8000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsError(ProtocolError):
    """A message that cannot be parsed; ``query_id`` is set when the header was readable."""

    def __init__(self, reason: str, *, query_id: int | None = None) -> None:
        super().__init__(reason)
        self.query_id = query_id


@dataclass(frozen=True, slots=True)
class Question:
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int

    @property
    def name(self) -> str:
        """Lower-case dotted name without the trailing dot ("" for the root)."""
        return ".".join(label.decode("latin-1") for label in self.labels).lower()


@dataclass(frozen=True, slots=True)
class Opt:
    """The EDNS pseudo-record of a query."""

    udp_size: int
    ext_rcode: int
    version: int
    dnssec_ok: bool
    options: bytes


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    opcode: int
    recursion_desired: bool
    question: Question
    opt: Opt | None


@dataclass(frozen=True, slots=True)
class ServiceName:
    """``[hostname.]service.namespace.svc.<cluster-domain>``."""

    service: str
    namespace: str
    hostname: str | None = None


def read_name(data: bytes, pos: int) -> tuple[tuple[bytes, ...], int]:
    """Labels of the name at ``pos`` and the offset just past it in the original message.

    Compression pointers must point strictly backwards, which (with a hop limit) makes
    pointer loops impossible.
    """
    labels: list[bytes] = []
    total = 1
    end: int | None = None
    hops = 0
    limit = pos  # a pointer must land before the place it was read from
    while True:
        if pos >= len(data):
            raise DnsError("name runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise DnsError("truncated compression pointer")
            target = (length & 0x3F) << 8 | data[pos + 1]
            if end is None:
                end = pos + 2
            hops += 1
            if target >= limit or hops > _MAX_POINTERS:
                raise DnsError("compression pointer does not point backwards")
            limit = target
            pos = target
            continue
        if kind:
            raise DnsError(f"reserved label type 0x{kind:02x}")
        if length == 0:
            return tuple(labels), (pos + 1 if end is None else end)
        label = data[pos + 1 : pos + 1 + length]
        if len(label) < length:
            raise DnsError("label runs past the end of the message")
        total += length + 1
        if total > MAX_NAME:
            raise DnsError("name longer than 255 bytes")
        labels.append(label)
        pos += 1 + length


def encode_name(labels: Sequence[bytes]) -> bytes:
    out = bytearray()
    for label in labels:
        if not 0 < len(label) <= MAX_LABEL:
            raise DnsError(f"label of {len(label)} bytes")
        out += bytes([len(label)]) + label
    out += b"\x00"
    if len(out) > MAX_NAME:
        raise DnsError("name longer than 255 bytes")
    return bytes(out)


def labels_of(name: str) -> tuple[bytes, ...]:
    return tuple(part.encode("ascii") for part in name.rstrip(".").split(".") if part)


def _u16(data: bytes, pos: int, what: str) -> int:
    if pos + 2 > len(data):
        raise DnsError(f"{what} runs past the end of the message")
    return int.from_bytes(data[pos : pos + 2], "big")


def parse_query(data: bytes) -> Query:
    """Parse a standard query with one question; the OPT record is kept when present."""
    if len(data) < HEADER_SIZE:
        raise DnsError("message shorter than its header")
    qid = int.from_bytes(data[0:2], "big")
    flags = int.from_bytes(data[2:4], "big")
    qdcount, ancount, nscount, arcount = (
        int.from_bytes(data[i : i + 2], "big") for i in range(4, 12, 2)
    )
    try:
        if flags & _QR:
            raise DnsError("message is a response, not a query")
        if qdcount != 1:
            raise DnsError(f"{qdcount} questions (exactly one is supported)")
        labels, pos = read_name(data, HEADER_SIZE)
        qtype = _u16(data, pos, "question type")
        qclass = _u16(data, pos + 2, "question class")
        pos += 4
        opt: Opt | None = None
        for index in range(ancount + nscount + arcount):
            _, pos = read_name(data, pos)
            rtype = _u16(data, pos, "record type")
            rclass = _u16(data, pos + 2, "record class")
            if pos + 8 > len(data):
                raise DnsError("record header runs past the end of the message")
            ttl = int.from_bytes(data[pos + 4 : pos + 8], "big")
            rdlength = _u16(data, pos + 8, "record length")
            rdata = data[pos + 10 : pos + 10 + rdlength]
            if len(rdata) < rdlength:
                raise DnsError("record data runs past the end of the message")
            pos += 10 + rdlength
            if rtype == TYPE_OPT and index >= ancount + nscount:
                if opt is not None:
                    raise DnsError("more than one OPT record")
                opt = Opt(
                    udp_size=rclass,
                    ext_rcode=ttl >> 24,
                    version=(ttl >> 16) & 0xFF,
                    dnssec_ok=bool(ttl & _DO),
                    options=bytes(rdata),
                )
    except DnsError as exc:
        raise DnsError(exc.reason, query_id=qid) from None
    return Query(
        id=qid,
        opcode=(flags >> 11) & 0xF,
        recursion_desired=bool(flags & _RD),
        question=Question(labels, qtype, qclass),
        opt=opt,
    )


def service_name(question_name: str, cluster_domain: str = "cluster.local") -> ServiceName | None:
    """Split a name under ``svc.<cluster_domain>``; None for any other name."""
    suffix = ".svc." + cluster_domain.strip(".").lower()
    name = question_name.rstrip(".").lower()
    if not name.endswith(suffix):
        return None
    parts = name[: -len(suffix)].split(".")
    if len(parts) == 2 and all(parts):
        return ServiceName(service=parts[0], namespace=parts[1])
    if len(parts) == 3 and all(parts):
        return ServiceName(service=parts[1], namespace=parts[2], hostname=parts[0])
    return None


def _record(rtype: int, ttl: int, rdata: bytes, *, name: bytes = b"\xc0\x0c") -> bytes:
    # The default name is a pointer to the question's name at offset 12.
    return (
        name
        + rtype.to_bytes(2, "big")
        + CLASS_IN.to_bytes(2, "big")
        + ttl.to_bytes(4, "big")
        + len(rdata).to_bytes(2, "big")
        + rdata
    )


def _soa(zone: str, ttl: int) -> bytes:
    zone_labels = labels_of(zone)
    rdata = (
        encode_name((b"ns", b"dns", *zone_labels))
        + encode_name((b"hostmaster", *zone_labels))
        + b"".join(v.to_bytes(4, "big") for v in (1, 7200, 1800, 86400, ttl))
    )
    return _record(TYPE_SOA, ttl, rdata, name=encode_name(zone_labels))


def build_response(
    query: Query,
    *,
    addresses: Sequence[IPAddress] = (),
    rcode: int = NOERROR,
    ttl: int = 5,
    negative_zone: str | None = None,
) -> bytes:
    """Answer ``query``: A or AAAA records from ``addresses`` (those matching the question's
    type), or an empty/negative answer. ``negative_zone`` adds the zone's SOA to empty and
    NXDOMAIN answers so resolvers cache the absence for ``ttl`` seconds.
    """
    q = query.question
    answers = [
        _record(q.qtype, ttl, addr.packed)
        for addr in addresses
        if (q.qtype, addr.version) in ((TYPE_A, 4), (TYPE_AAAA, 6))
    ]
    authority = []
    if negative_zone is not None and not answers and rcode in (NOERROR, NXDOMAIN):
        authority.append(_soa(negative_zone, ttl))
    additional = []
    limit = UDP_PLAIN_LIMIT
    if query.opt is not None:
        limit = max(UDP_PLAIN_LIMIT, min(query.opt.udp_size, EDNS_UDP_SIZE))
        ttl_field = (_DO if query.opt.dnssec_ok else 0).to_bytes(4, "big")
        additional.append(
            b"\x00"
            + TYPE_OPT.to_bytes(2, "big")
            + EDNS_UDP_SIZE.to_bytes(2, "big")
            + ttl_field
            + b"\x00\x00"
        )
    question = encode_name(q.labels) + q.qtype.to_bytes(2, "big") + q.qclass.to_bytes(2, "big")
    flags = _QR | _AA | _RA | (query.opcode << 11) | (rcode & 0xF)
    if query.recursion_desired:
        flags |= _RD

    def assemble(flags: int, answers: list[bytes], authority: list[bytes]) -> bytes:
        header = b"".join(
            n.to_bytes(2, "big")
            for n in (query.id, flags, 1, len(answers), len(authority), len(additional))
        )
        return header + question + b"".join(answers) + b"".join(authority) + b"".join(additional)

    message = assemble(flags, answers, authority)
    if len(message) > limit:
        # The client retries over TCP when it sees TC; the assembled answer is for that.
        message = assemble(flags | _TC, [], [])
    return message


def build_error(query_id: int, rcode: int) -> bytes:
    """A bare answer (no question echoed) for messages too broken to parse."""
    flags = _QR | _RA | (rcode & 0xF)
    return query_id.to_bytes(2, "big") + flags.to_bytes(2, "big") + bytes(8)


def build_query(name: str, qtype: int = TYPE_A, *, query_id: int = 0, edns: bool = False) -> bytes:
    """A recursion-desired query, for forwarding probes and tests."""
    header = query_id.to_bytes(2, "big") + _RD.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00"
    header += b"\x00\x01" if edns else b"\x00\x00"
    body = encode_name(labels_of(name)) + qtype.to_bytes(2, "big") + CLASS_IN.to_bytes(2, "big")
    if edns:
        body += b"\x00" + TYPE_OPT.to_bytes(2, "big") + EDNS_UDP_SIZE.to_bytes(2, "big") + bytes(6)
    return header + body


def frame_tcp(message: bytes) -> bytes:
    """DNS over TCP prefixes every message with its 2-byte length (RFC 1035 4.2.2)."""
    if len(message) > 0xFFFF:
        raise DnsError("message too large for TCP framing")
    return len(message).to_bytes(2, "big") + message
