"""The mesh tunnel preamble: what the source agent tells the destination agent inside TLS.

Wire format, version 1, integers big-endian::

    header (10 bytes)
      magic        4   b"NMTP"
      version      1   1
      protocol     1   detected protocol hint (0 unknown, 1 http/1, 2 h2, 3 tls, 4 opaque)
      flags        2   PreambleFlags; unknown bits are carried, not rejected
      body length  2   bytes that follow, at most MAX_BODY
    body
      target port  2   the port the client originally connected to
      addr length  1   4 or 16
      address      n   original destination IP
      ns length    1 + namespace (UTF-8)   source pod namespace (informational)
      pod length   1 + pod name (UTF-8)    source pod name (informational)
      extensions   rest: (type 1, length 1, value) records a later version may add;
                   a version 1 reader keeps them but does not interpret them

The source's identity is never taken from here: it is the TLS client certificate.
The destination answers with an 8-byte reply (magic b"NMTR", version, code, 2 bytes of
ReplyFlags, which a version 1 reader that knows none of them ignores) so the source can fail
fast instead of relaying into a refused tunnel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

from nodeagent.protocol.detect import Protocol
from nodeagent.protocol.errors import ProtocolError

MAGIC = b"NMTP"
REPLY_MAGIC = b"NMTR"
VERSION = 1
HEADER_SIZE = 10
REPLY_SIZE = 8
MAX_BODY = 1024
MAX_NAME = 253  # a Kubernetes object name is a DNS subdomain

_PROTOCOL_CODES: dict[Protocol | None, int] = {
    None: 0,
    Protocol.HTTP1: 1,
    Protocol.HTTP2: 2,
    Protocol.TLS: 3,
    Protocol.OPAQUE: 4,
}
_CODE_PROTOCOLS = {code: proto for proto, code in _PROTOCOL_CODES.items()}


class PreambleFlags(IntFlag):
    NONE = 0
    # The source already decided the protocol (e.g. an opaque port): do not detect again.
    SKIP_DETECTION = 0x1
    # The source waits for the reply before it relays the application's bytes. It may send the
    # first of them (up to 16 KiB) right after the preamble: the destination holds them until
    # it accepts (and drops them when it refuses), so they never reach an app it refused.
    WANT_REPLY = 0x2
    # The source observes this connection's HTTP requests and can report them for the
    # destination too (observe once): the destination may relay without parsing, and says so
    # in its reply (ReplyFlags.OBSERVED_AT_SOURCE). Without that answer the source reports its
    # own side only, so an agent that does not know this bit never makes a request count twice.
    SOURCE_OBSERVES = 0x4


class ReplyFlags(IntFlag):
    NONE = 0
    # The destination does not parse this connection's HTTP: the source reports its requests
    # as the destination's inbound ones too.
    OBSERVED_AT_SOURCE = 0x1


class ReplyCode(IntEnum):
    ACCEPTED = 0
    UNSUPPORTED_VERSION = 1
    MALFORMED = 2
    POLICY_DENIED = 3  # strict inbound mode or authorization policy
    NO_SUCH_TARGET = 4  # the destination IP is not a pod this agent serves
    CONNECT_FAILED = 5  # the application refused the connection
    OVERLOADED = 6


class PreambleError(ProtocolError):
    """A preamble or reply that cannot be accepted."""


class PreambleTruncated(PreambleError):
    """Not enough bytes yet; ``needed`` is the total size to read before trying again."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"truncated: {needed} bytes needed")
        self.needed = needed


class BadMagic(PreambleError):
    """Not a nodemesh preamble at all (a plain TLS client, or a scanner)."""


class UnsupportedVersion(PreambleError):
    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported preamble version {version}")
        self.version = version


class Oversized(PreambleError):
    """A length over the format's limits."""


@dataclass(frozen=True, slots=True)
class Preamble:
    target_port: int
    original_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    protocol: Protocol | None = None
    source_namespace: str = ""
    source_pod: str = ""
    flags: PreambleFlags = PreambleFlags.NONE
    extensions: tuple[tuple[int, bytes], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    flags: ReplyFlags = ReplyFlags.NONE

    @property
    def accepted(self) -> bool:
        return self.code == ReplyCode.ACCEPTED

    @property
    def reason(self) -> str:
        try:
            return ReplyCode(self.code).name.lower()
        except ValueError:
            return f"refused ({self.code})"


def _name(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_NAME:
        raise Oversized(f"{what} longer than {MAX_NAME} bytes")
    return bytes([len(raw)]) + raw


def encode_preamble(p: Preamble) -> bytes:
    if not 0 < p.target_port < 65536:
        raise PreambleError(f"target port {p.target_port} out of range")
    ip = p.original_ip.packed
    body = bytearray(p.target_port.to_bytes(2, "big"))
    body += bytes([len(ip)]) + ip
    body += _name(p.source_namespace, "namespace")
    body += _name(p.source_pod, "pod name")
    for ext_type, value in p.extensions:
        if not 0 <= ext_type < 256 or len(value) > 255:
            raise Oversized("extension type or value out of range")
        body += bytes([ext_type, len(value)]) + value
    if len(body) > MAX_BODY:
        raise Oversized(f"preamble body of {len(body)} bytes over {MAX_BODY}")
    header = MAGIC + bytes([VERSION, _PROTOCOL_CODES[p.protocol]])
    header += int(p.flags).to_bytes(2, "big") + len(body).to_bytes(2, "big")
    return header + bytes(body)


def preamble_size(data: bytes) -> int:
    """Total preamble size from its first HEADER_SIZE bytes (checks magic and version)."""
    if len(data) < HEADER_SIZE:
        if not MAGIC.startswith(data[:4]):
            raise BadMagic("not a nodemesh tunnel preamble")
        raise PreambleTruncated(HEADER_SIZE)
    if data[:4] != MAGIC:
        raise BadMagic("not a nodemesh tunnel preamble")
    if data[4] != VERSION:
        raise UnsupportedVersion(data[4])
    body_len = int.from_bytes(data[8:10], "big")
    if body_len > MAX_BODY:
        raise Oversized(f"preamble body of {body_len} bytes over {MAX_BODY}")
    return HEADER_SIZE + body_len


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise PreambleError(f"{what} runs past the end of the preamble body")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def name(self, what: str) -> str:
        raw = self.take(self.take(1, what)[0], what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PreambleError(f"{what} is not UTF-8") from exc


def decode_preamble(data: bytes) -> tuple[Preamble, int]:
    """Decode the preamble at the start of ``data``; returns it and the bytes it used.

    Bytes after it are application bytes and belong to the caller.
    """
    size = preamble_size(data)
    if len(data) < size:
        raise PreambleTruncated(size)
    body = bytes(data[HEADER_SIZE:size])
    cur = _Cursor(body, 0)
    port = int.from_bytes(cur.take(2, "target port"), "big")
    if port == 0:
        raise PreambleError("target port 0")
    addr_len = cur.take(1, "address length")[0]
    if addr_len not in (4, 16):
        raise PreambleError(f"address length {addr_len}")
    ip = ipaddress.ip_address(cur.take(addr_len, "address"))
    namespace = cur.name("namespace")
    pod = cur.name("pod name")
    extensions = []
    while cur.pos < len(body):
        ext_type = cur.take(1, "extension type")[0]
        extensions.append((ext_type, cur.take(cur.take(1, "extension length")[0], "extension")))
    preamble = Preamble(
        target_port=port,
        original_ip=ip,
        protocol=_CODE_PROTOCOLS.get(data[5]),
        source_namespace=namespace,
        source_pod=pod,
        flags=PreambleFlags(int.from_bytes(data[6:8], "big")),
        extensions=tuple(extensions),
    )
    return preamble, size


def encode_reply(code: ReplyCode | int, flags: ReplyFlags | int = ReplyFlags.NONE) -> bytes:
    if not 0 <= int(code) < 256:
        raise PreambleError(f"reply code {code} out of range")
    if not 0 <= int(flags) < 1 << 16:
        raise PreambleError(f"reply flags {flags} out of range")
    return REPLY_MAGIC + bytes([VERSION, int(code)]) + int(flags).to_bytes(2, "big")


def decode_reply(data: bytes) -> Reply:
    if len(data) < REPLY_SIZE:
        if not REPLY_MAGIC.startswith(data[:4]):
            raise BadMagic("not a nodemesh tunnel reply")
        raise PreambleTruncated(REPLY_SIZE)
    if data[:4] != REPLY_MAGIC:
        raise BadMagic("not a nodemesh tunnel reply")
    if data[4] != VERSION:
        raise UnsupportedVersion(data[4])
    return Reply(data[5], ReplyFlags(int.from_bytes(data[6:8], "big")))
