"""Reads SNI and ALPN from a TLS ClientHello that may still be arriving (RFC 8446 4.1.2)."""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXT_SERVER_NAME = 0
EXT_ALPN = 16

# TLSPlaintext fragments are at most 2^14 bytes; a ClientHello split over several records is
# legal, but one larger than this is not something a real client sends.
MAX_RECORD = 1 << 14
MAX_CLIENT_HELLO = 1 << 14


class NotClientHello(Exception):
    """The bytes are not (or no longer can be) a well-formed TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None
    alpn: tuple[str, ...]


class _Reader:
    """Bounds-checked cursor; any overrun means a malformed message."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise NotClientHello("field runs past its container")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> _Reader:
        n = self.uint(len_bytes)
        start = self.pos
        self.take(n)
        return _Reader(self.data, start, start + n)

    def remaining(self) -> int:
        return self.end - self.pos


def _handshake_bytes(data: bytes) -> bytes:
    """Concatenate handshake record fragments until the ClientHello is whole or data ends.

    Records after a complete ClientHello are not looked at: with 0-RTT a client sends
    ChangeCipherSpec and early data right behind it.
    """
    fragments = bytearray()
    pos = 0
    while pos < len(data):
        if len(fragments) >= 4 and len(fragments) >= 4 + int.from_bytes(fragments[1:4], "big"):
            break
        header = data[pos : pos + 5]
        if header[0] != RECORD_HANDSHAKE:
            raise NotClientHello(f"record type {header[0]} before the ClientHello ended")
        if len(header) >= 2 and header[1] != 3:
            raise NotClientHello("record version is not 3.x")
        if len(header) >= 3 and header[2] > 4:
            raise NotClientHello("record version is not 3.x")
        if len(header) < 5:
            break
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_RECORD:
            raise NotClientHello(f"handshake record length {length}")
        fragments += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(fragments)


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data``; None means more bytes are needed."""
    handshake = _handshake_bytes(data)
    if not handshake:
        return None
    if handshake[0] != HANDSHAKE_CLIENT_HELLO:
        raise NotClientHello(f"handshake type {handshake[0]}")
    if len(handshake) < 4:
        return None
    length = int.from_bytes(handshake[1:4], "big")
    if length > MAX_CLIENT_HELLO:
        raise NotClientHello(f"ClientHello of {length} bytes")
    if len(handshake) < 4 + length:
        return None
    return _parse_body(_Reader(handshake, 4, 4 + length))


def _parse_body(r: _Reader) -> ClientHello:
    version = r.uint(2)
    if version >> 8 != 3:
        raise NotClientHello("legacy_version is not 3.x")
    r.take(32)  # random
    if r.vector(1).remaining() > 32:
        raise NotClientHello("session id longer than 32 bytes")
    suites = r.vector(2)
    if suites.remaining() == 0 or suites.remaining() % 2:
        raise NotClientHello("bad cipher suite list")
    if r.vector(1).remaining() == 0:
        raise NotClientHello("no compression methods")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    if r.remaining() == 0:
        return ClientHello(None, ())
    extensions = r.vector(2)
    if r.remaining():
        raise NotClientHello("bytes after the extensions")
    while extensions.remaining():
        ext_type = extensions.uint(2)
        body = extensions.vector(2)
        if ext_type == EXT_SERVER_NAME and body.remaining():
            sni = _server_name(body)
        elif ext_type == EXT_ALPN:
            alpn = _alpn(body)
    return ClientHello(sni, alpn)


def _server_name(body: _Reader) -> str | None:
    names = body.vector(2)
    while names.remaining():
        name_type = names.uint(1)
        name = names.vector(2)
        raw = name.take(name.remaining())
        if name_type != 0:
            continue
        if not raw or not raw.isascii():
            raise NotClientHello("server name is not an ASCII host name")
        return raw.decode("ascii").rstrip(".").lower() or None
    return None


def _alpn(body: _Reader) -> tuple[str, ...]:
    protocols = body.vector(2)
    out = []
    while protocols.remaining():
        proto = protocols.vector(1)
        if proto.remaining() == 0:
            raise NotClientHello("empty ALPN protocol name")
        out.append(proto.take(proto.remaining()).decode("latin-1"))
    return tuple(out)
