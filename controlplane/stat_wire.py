"""A Stat answer's bytes written directly (protobuf's wire format for `StatResponse`), for the
telemetry worker's encoded answers (controlplane.stat_answer.encode).

A cold Stat pod at 10,000 pods spent ~21 ms making 10,000 protobuf `StatRow`s (`rows.add`
with keyword arguments, a `Resource` from a dict each) and 3 ms encoding them; written here,
each row is a few byte strings joined: the resource's field kept between answers (the same
pods are asked about every second), small counts from tables, the doubles packed by one
`struct` call. The bytes are those protobuf writes for the same row (fields in number order,
proto3 zeros and empty strings left out, an optional field written whenever it is given, even
0.0): tests/unit/controlplane/test_cp_stat_wire.py compares them over varied rows. Keep it in
step with nodemesh/api/public.proto's `StatRow`, `Resource` and `StatResponse`.
"""

from __future__ import annotations

import struct
from typing import Any

# Tags (field number << 3 | wire type) of StatRow's fields: 0 varint, 1 64-bit, 2 bytes.
_RESOURCE = b"\x0a"  # 1, a Resource: kind 1, namespace 2, name 3 (strings)
_MESHED = b"\x10"  # 2 uint32
_TOTAL = b"\x18"  # 3 uint32
_REQUESTS = b"\x20"  # 4 uint64
_SUCCESS_RATE = b"\x29"  # 5 optional double
_RPS = b"\x31"  # 6 double
_P50, _P95, _P99 = b"\x39", b"\x41", b"\x49"  # 7, 8, 9 optional double
_OPEN = b"\x50"  # 10 uint64
_READ = b"\x58"  # 11 uint64
_WRITE = b"\x60"  # 12 uint64
_COVERED = b"\x69"  # 13 double
_DENIED = b"\xa0\x01"  # 20 uint64
_ROW = b"\x0a"  # StatResponse.rows, 1
_WINDOW = b"\x10"  # StatResponse.window_seconds, 2 uint32

_double = struct.Struct("<d").pack
# A row with traffic, latency and no TCP counts: success rate, rps, the three quantiles and
# (after TCP's fields, all zero) the covered seconds, tags included, in one call.
_DOUBLES = struct.Struct("<BdBdBdBdBdBd").pack
_SMALL = 1 << 14  # counts below this come from tables (one or two bytes)


def varint(n: int) -> bytes:
    """`n` (>= 0) as a protobuf varint."""
    if n < 0:
        raise ValueError(f"an unsigned field cannot hold {n}")
    if n < _SMALL:
        return _VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _make_varints() -> list[bytes]:
    out = []
    for n in range(_SMALL):
        out.append(bytes([n]) if n < 0x80 else bytes([n & 0x7F | 0x80, n >> 7]))
    return out


_VARINTS = _make_varints()


def _field(tag: bytes) -> list[bytes]:
    """tag + varint(n) for each small n, b"" for 0 (a proto3 zero is not written)."""
    return [b""] + [tag + v for v in _VARINTS[1:]]


_MESHED_OF, _TOTAL_OF, _REQUESTS_OF = _field(_MESHED), _field(_TOTAL), _field(_REQUESTS)
_ROW_OF = [_ROW + v for v in _VARINTS]  # a row's tag and its length
_FEW = 64
# meshed_pods and total_pods together, both below _FEW: _PODS[meshed][total].
_PODS = [[_MESHED_OF[m] + _TOTAL_OF[t] for t in range(_FEW)] for m in range(_FEW)]


def _uint(tag: bytes, table: list[bytes] | None, n: int) -> bytes:
    if table is not None and 0 <= n < _SMALL:
        return table[n]
    return tag + varint(n) if n else b""


def _is_zero(x: float) -> bool:
    # protobuf leaves out a double whose bits are all zero: 0.0, not -0.0.
    return x == 0.0 and _double(x) == b"\0" * 8


class ResourceFields:
    """Each resource's encoded `resource` field, kept between answers: `of(kind)[(namespace,
    name)]`. At most `limit` per kind (all let go past it: pods come and go)."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self.kinds: dict[str, _KindFields] = {}

    def of(self, kind: str) -> dict[tuple[str, str], bytes]:
        found = self.kinds.get(kind)
        if found is None or len(found) > self.limit:
            found = self.kinds[kind] = _KindFields(kind)
        return found


class _KindFields(dict[tuple[str, str], bytes]):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def __missing__(self, key: tuple[str, str]) -> bytes:
        found = self[key] = _resource_field(self.kind, key[0], key[1])
        return found


def _resource_field(kind: str, namespace: str, name: str) -> bytes:
    body = b""
    for tag, text in ((b"\x0a", kind), (b"\x12", namespace), (b"\x1a", name)):
        if text:
            raw = text.encode()
            body += tag + varint(len(raw)) + raw
    return _RESOURCE + varint(len(body)) + body


def row(
    resource: bytes,
    meshed: int,
    total: int,
    traffic: tuple[Any, ...] | None,
) -> bytes:
    """One `rows` entry of a StatResponse (tag and length included): `resource` from
    `ResourceFields`, `traffic` a query.PlainTraffic with three quantiles, or None."""
    if meshed < _FEW and total < _FEW:
        head = resource + _PODS[meshed][total]
    else:
        head = resource + _uint(_MESHED, _MESHED_OF, meshed) + _uint(_TOTAL, _TOTAL_OF, total)
    if traffic is None:
        body = head
    else:
        covered, success, failure, gauge, read, write, denied, p50, p95, p99 = traffic
        requests = success + failure
        rps = requests / covered
        if (
            0 < requests < _SMALL
            and p99 is not None
            and p95 is not None
            and p50 is not None
            and not (gauge or read or write or denied)
            and rps
            and covered
        ):
            # The common row: requests, every double, no TCP counts nor denials.
            body = head + _REQUESTS_OF[requests] + _DOUBLES(
                0x29, success / requests, 0x31, rps, 0x39, p50, 0x41, p95, 0x49, p99,
                0x69, covered,
            )  # fmt: skip
        else:
            parts = [head, _uint(_REQUESTS, _REQUESTS_OF, requests)]
            if requests:
                parts.append(_SUCCESS_RATE + _double(success / requests))
            if not _is_zero(rps):
                parts.append(_RPS + _double(rps))
            for tag, q in ((_P50, p50), (_P95, p95), (_P99, p99)):
                if q is not None:
                    parts.append(tag + _double(q))
            parts.append(_uint(_OPEN, None, gauge))
            parts.append(_uint(_READ, None, read))
            parts.append(_uint(_WRITE, None, write))
            if not _is_zero(covered):
                parts.append(_COVERED + _double(covered))
            if denied:
                parts.append(_DENIED + varint(denied))
            body = b"".join(parts)
    size = len(body)
    return (_ROW_OF[size] if size < _SMALL else _ROW + varint(size)) + body


def window_field(window: int) -> bytes:
    """StatResponse.window_seconds, written after the rows (b"" for 0)."""
    return _WINDOW + varint(window) if window else b""
