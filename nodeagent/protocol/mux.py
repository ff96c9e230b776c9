"""Many app connections over one agent-to-agent mTLS connection: what goes on the wire (sans-io).

A tunnel connection whose TLS handshake agreed on the ALPN protocol `ALPN` carries HTTP/2
(RFC 9113), as Istio ambient's HBONE does: each app connection is one stream, opened by a
CONNECT request whose :authority names the target pod IP and port, answered 200 at once by the
destination agent; the stream's DATA then carries exactly what a one-connection tunnel carries
after its handshake (the preamble, its reply, then the app's bytes), so admission is the same
code either way. END_STREAM is the app's half-close, RST_STREAM its reset. A tunnel connection
without that ALPN (an agent of an older version, either end) is today's one connection per
tunnel, which both ends keep accepting.
"""

from __future__ import annotations

import ipaddress

ALPN = "nodemesh-mux/1"

# HTTP/2 settings of both ends: streams open at once on one connection, how much one stream (and
# the whole connection) may have in flight unread, and the largest frame accepted.
MAX_STREAMS = 512
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 32 << 20
MAX_FRAME = 1 << 16
# A PING with this payload says "this agent is draining: open no new stream here" (an HTTP/2
# GOAWAY would also end the streams still running, with the h2 library).
DRAIN_PING = b"nm-drain"


class MuxHeaderError(ValueError):
    """A CONNECT request that does not name a target as `IP:port`."""


def _authority(ip: str, port: int) -> bytes:
    return (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()


def connect_headers(ip: str, port: int) -> list[tuple[bytes, bytes]]:
    """The CONNECT's header fields (encode_connect is what an agent sends of them)."""
    return [(b":method", b"CONNECT"), (b":authority", _authority(ip, port))]


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) in a prefix of `prefix_bits` bits after `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name_index: int, value: bytes) -> bytes:
    """A header field literal without indexing, its name from the static table (RFC 7541
    6.2.2): no entry in the decoder's dynamic table, so the block needs no encoder state."""
    return _hpack_int(name_index, 4, 0x00) + _hpack_int(len(value), 7, 0x00) + value


# Static table indexes (RFC 7541 appendix A).
_AUTHORITY, _METHOD = 1, 2
# ":status 200" and ":status 400" are whole entries of the static table: one byte each.
STATUS_200, STATUS_400 = b"\x88", b"\x8d"


def encode_connect(ip: str, port: int) -> bytes:
    """The header block of the CONNECT that opens a stream to (ip, port), HPACK-encoded."""
    return _literal(_METHOD, b"CONNECT") + _literal(_AUTHORITY, _authority(ip, port))


def parse_connect(headers: list[tuple[bytes, bytes]]) -> tuple[str, int]:
    """The target (IP, port) a stream's request names; MuxHeaderError when it is not a CONNECT
    to an IPv4/IPv6 address and a port in 1-65535."""
    fields = dict(headers)
    method = fields.get(b":method", b"")
    if method != b"CONNECT":
        raise MuxHeaderError(f"tunnel stream: method {method.decode(errors='replace')!r}, "
                             "expected CONNECT")  # fmt: skip
    authority = fields.get(b":authority", b"").decode(errors="replace")
    host, sep, port_text = authority.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        if not sep:
            raise ValueError("no port")
        ip = ipaddress.ip_address(host)
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
    except ValueError as exc:
        raise MuxHeaderError(f"tunnel stream: bad :authority {authority!r}: {exc}") from exc
    return str(ip), port
