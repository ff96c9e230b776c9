"""Read the few facts the agent needs from an X.509 certificate's DER, without `cryptography`.

Interface: `leaf_facts(der) -> CertFacts(not_before, not_after, uri_sans)`; `pem_blocks(pem,
label)` -> the DER of each PEM block with that label; `DerError` (a ValueError) when the
bytes are not a certificate as RFC 5280 lays it out.

Only certificates that OpenSSL has accepted (a handshake's verified peer) or that the agent
just received from its own CA over TLS get here; the reader is strict anyway (definite lengths
that fit exactly, at most one SubjectAlternativeName extension, the fields in their order)
and checks nothing about signatures or trust: OpenSSL does that.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from dataclasses import dataclass

SEQUENCE = 0x30
INTEGER = 0x02
OID = 0x06
BOOLEAN = 0x01
OCTET_STRING = 0x04
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
VERSION_TAG = 0xA0  # [0] EXPLICIT
EXTENSIONS_TAG = 0xA3  # [3] EXPLICIT
URI_TAG = 0x86  # GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
SAN_OID = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17


class DerError(ValueError):
    """Not a DER certificate laid out as RFC 5280 says."""


@dataclass(frozen=True)
class CertFacts:
    not_before: datetime.datetime
    not_after: datetime.datetime
    uri_sans: tuple[str, ...]


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at `pos`, which must end by `end`."""
    if pos + 2 > end:
        raise DerError("truncated element")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DerError("high tag numbers are not used in certificates")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise DerError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("length not in its shortest form")
        pos += count
    if pos + length > end:
        raise DerError("element runs past its container")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = _tlv(data, pos, end)
        out.append((tag, s, e))
        pos = e
    return out


def _expect(element: tuple[int, int, int], tag: int, what: str) -> tuple[int, int]:
    if element[0] != tag:
        raise DerError(f"{what}: tag {element[0]:#04x}, expected {tag:#04x}")
    return element[1], element[2]


def _time(data: bytes, element: tuple[int, int, int]) -> datetime.datetime:
    tag, s, e = element
    text = data[s:e].decode("ascii", "replace")
    if tag == UTC_TIME and re.fullmatch(r"\d{12}Z", text):
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif not (tag == GENERALIZED_TIME and re.fullmatch(r"\d{14}Z", text)):
        raise DerError(f"validity time {text!r} is not UTCTime or GeneralizedTime in UTC")
    try:
        return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.UTC)
    except ValueError as exc:
        raise DerError(f"validity time {text!r}: {exc}") from exc


def _uris(data: bytes, start: int, end: int) -> list[str]:
    s, e = _expect(_tlv(data, start, end), SEQUENCE, "SubjectAltName")
    if e != end:
        raise DerError("bytes after SubjectAltName")
    uris = []
    for tag, gs, ge in _children(data, s, e):
        if tag == URI_TAG:
            try:
                uris.append(data[gs:ge].decode("ascii"))
            except UnicodeDecodeError as exc:
                raise DerError("URI SAN is not IA5 text") from exc
    return uris


def leaf_facts(der: bytes) -> CertFacts:
    """Validity and URI SANs of the certificate `der` (raises DerError if it is not one)."""
    cert_s, cert_e = _expect(_tlv(der, 0, len(der)), SEQUENCE, "Certificate")
    if cert_e != len(der):
        raise DerError("bytes after the certificate")
    tbs_s, tbs_e = _expect(_tlv(der, cert_s, cert_e), SEQUENCE, "TBSCertificate")
    fields = _children(der, tbs_s, tbs_e)
    if fields and fields[0][0] == VERSION_TAG:
        fields = fields[1:]
    if len(fields) < 6:
        raise DerError("TBSCertificate has too few fields")
    _expect(fields[0], INTEGER, "serialNumber")
    for i, name in ((1, "signature"), (2, "issuer"), (3, "validity"), (4, "subject"), (5, "spki")):
        _expect(fields[i], SEQUENCE, name)
    validity = _children(der, fields[3][1], fields[3][2])
    if len(validity) != 2:
        raise DerError("validity is not two times")
    not_before, not_after = _time(der, validity[0]), _time(der, validity[1])
    uris: list[str] | None = None
    for tag, s, e in fields[6:]:
        if tag != EXTENSIONS_TAG:
            continue
        seq_s, seq_e = _expect(_tlv(der, s, e), SEQUENCE, "extensions")
        for ext in _children(der, seq_s, seq_e):
            parts = _children(der, *_expect(ext, SEQUENCE, "extension"))
            oid_s, oid_e = _expect(parts[0], OID, "extnID") if parts else (0, 0)
            if der[oid_s:oid_e] != SAN_OID:
                continue
            if uris is not None:
                raise DerError("two SubjectAltName extensions")
            value = parts[-1]
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[1][0] != BOOLEAN):
                raise DerError("malformed SubjectAltName extension")
            uris = _uris(der, *_expect(value, OCTET_STRING, "extnValue"))
    return CertFacts(not_before, not_after, tuple(uris or ()))


_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


def pem_blocks(pem: bytes, label: str) -> list[bytes]:
    """The DER of every PEM block labelled `label` in `pem`, in order."""
    out = []
    for match in _PEM.finditer(pem):
        if match.group(1).decode() != label:
            continue
        try:
            out.append(base64.b64decode(b"".join(match.group(2).split()), validate=True))
        except binascii.Error as exc:
            raise DerError(f"PEM {label}: {exc}") from exc
    return out
