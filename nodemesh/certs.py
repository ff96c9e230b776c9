"""Agent-side certificate handling: in-memory TLS 1.3 mTLS contexts, issued chains, peer checks.

Interface (no gRPC and no `cryptography` here: this module is loaded into the agent process;
keys and CSRs are made by nodemesh.keymaker, in a child process for the agent):
- `CertifiedKey.from_pem(identity, key_pem, chain_pem)`: a PKCS8 PEM key + the chain the CA
  issued for it (leaf first), with `not_before`, `not_after`, `renew_at`; raises PeerRejected
  unless the leaf names exactly `identity` and holds the key's public half.
- `renewal_time(not_before, not_after)`: two-thirds into the lifetime.
- `server_context(certified, trust_anchors_pem=...)` / `client_context(...)`: TLS 1.3 only,
  peer certificates required and chained to the trust anchors by OpenSSL during the handshake.
- `peer_identity(ssl_object)`: the URI SAN of the (already verified) peer certificate, as
  OpenSSL parsed it;
  `check_peer(ssl_object, expected=...)` raises PeerRejected unless it is `expected`.

Issued chains are read with nodemesh.der (validity and URI SANs); whether the key matches the
leaf is OpenSSL's own check when the chain and key are loaded into a context. A peer's identity
is what OpenSSL parsed of its verified certificate (`getpeercert()`).

Loading a context never puts a key on a filesystem: Python's ssl can only load a certificate
chain and key from a path, so they are written to an anonymous memfd (os.memfd_create) and
loaded through /proc/self/fd/<n>; the memfd is closed, and its memory freed, right after
loading. (The agent does keep its pods' keys in one root-only file on the node's tmpfs, to
serve across its own restart: nodeagent.handover.servingstate.)
"""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nodemesh import der

RENEW_FRACTION = 2 / 3


class PeerRejected(Exception):
    """The peer's certificate does not prove the identity we expected."""


def renewal_time(not_before: datetime.datetime, not_after: datetime.datetime) -> datetime.datetime:
    """When to ask for a new certificate: two-thirds of the way through its validity."""
    return not_before + (not_after - not_before) * RENEW_FRACTION


@dataclass(frozen=True)
class CertifiedKey:
    """A workload's private key (PKCS8 PEM) and the chain (PEM, leaf first) issued for it."""

    identity: str
    key_pem: bytes
    chain: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime

    @classmethod
    def from_pem(cls, identity: str, key_pem: bytes | str, chain_pem: bytes | str) -> CertifiedKey:
        key = key_pem.encode() if isinstance(key_pem, str) else bytes(key_pem)
        data = chain_pem.encode() if isinstance(chain_pem, str) else bytes(chain_pem)
        if b"PRIVATE KEY-----" not in key:
            raise ValueError("the key is not a PEM private key")
        try:
            ders = der.pem_blocks(data, "CERTIFICATE")
            if not ders:
                raise PeerRejected("no certificate in the issued chain")
            facts = der.leaf_facts(ders[0])
        except der.DerError as exc:
            raise PeerRejected(f"issued certificate is unreadable: {exc}") from exc
        if list(facts.uri_sans) != [identity]:
            raise PeerRejected(f"issued certificate is not for {identity}")
        certified = cls(identity, key, data, facts.not_before, facts.not_after)
        try:
            _load_chain_from_memory(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), certified)
        except ssl.SSLError as exc:
            # OpenSSL checks that the key is the leaf's ("key values mismatch").
            raise PeerRejected(f"issued certificate does not hold our public key: {exc}") from exc
        return certified

    @property
    def renew_at(self) -> datetime.datetime:
        return renewal_time(self.not_before, self.not_after)

    def chain_pem(self) -> bytes:
        return self.chain


def _load_chain_from_memory(ctx: ssl.SSLContext, certified: CertifiedKey) -> None:
    data = memoryview(certified.chain + b"\n" + certified.key_pem)
    fd = os.memfd_create("nodemesh-cert", os.MFD_CLOEXEC)
    try:
        while data:
            data = data[os.write(fd, data) :]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _context(
    purpose: ssl._SSLMethod, certified: CertifiedKey, trust_anchors_pem: bytes | str
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Peers are named by SPIFFE URI SANs, not host names; check_peer compares those.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    anchors = (
        trust_anchors_pem.decode() if isinstance(trust_anchors_pem, bytes) else trust_anchors_pem
    )
    ctx.load_verify_locations(cadata=anchors)
    _load_chain_from_memory(ctx, certified)
    return ctx


def server_context(certified: CertifiedKey, *, trust_anchors_pem: bytes | str) -> ssl.SSLContext:
    """For the 4143 tunnel listener: presents `certified`, requires a client certificate."""
    return _context(ssl.PROTOCOL_TLS_SERVER, certified, trust_anchors_pem)


def client_context(certified: CertifiedKey, *, trust_anchors_pem: bytes | str) -> ssl.SSLContext:
    """For connections to a peer agent: presents `certified`, requires the server's certificate."""
    return _context(ssl.PROTOCOL_TLS_CLIENT, certified, trust_anchors_pem)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The SPIFFE ID of a peer whose chain OpenSSL verified during the handshake, as OpenSSL
    itself parsed it (`getpeercert()`: the identity every policy decision rests on is not read
    by our own DER reader)."""
    cert = ssl_object.getpeercert(binary_form=True)
    if not cert:
        raise PeerRejected("peer sent no certificate")
    # Every tunnel, both ends: the same few certificates again and again (a leaf lives 24 h),
    # so each one's identity is looked up by its bytes. Only what OpenSSL verified gets here; a
    # failure is not kept.
    known = _IDENTITIES.get(cert)
    if known is None:
        known = _identity_of(ssl_object.getpeercert())
        if len(_IDENTITIES) >= _IDENTITIES_KEPT:
            _IDENTITIES.clear()
        _IDENTITIES[cert] = known
    return known


_IDENTITIES: dict[bytes, str] = {}
_IDENTITIES_KEPT = 512


def _identity_of(parsed: Mapping[str, Any] | None) -> str:
    if not parsed:  # getpeercert() is empty unless the chain was verified
        raise PeerRejected("peer certificate was not verified")
    sans = [value for kind, value in parsed.get("subjectAltName", ()) if kind == "URI"]
    if len(sans) != 1:
        raise PeerRejected(f"peer certificate carries {len(sans)} URI SANs, expected one")
    return str(sans[0])


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, *, expected: str) -> None:
    """Raise PeerRejected unless the handshake's peer proved exactly `expected`."""
    actual = peer_identity(ssl_object)
    if actual != expected:
        raise PeerRejected(f"peer is {actual}, expected {expected}")
