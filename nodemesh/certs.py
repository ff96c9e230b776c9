"""Agent-side certificate handling: keys, CSRs, in-memory TLS 1.3 mTLS contexts, peer checks.

Interface (no gRPC here; the agent's identity client calls these around Identity.Certify):
- `new_key()`, `make_csr(identity, key) -> PEM bytes` (empty subject, the SPIFFE ID as only SAN).
- `CertifiedKey.from_pem(identity, key, chain_pem)`: key + chain, with `not_after`, `renew_at`.
- `renewal_time(not_before, not_after)`: two-thirds into the lifetime.
- `server_context(certified, trust_anchors_pem=...)` / `client_context(...)`: TLS 1.3 only,
  peer certificates required and chained to the trust anchors by OpenSSL during the handshake.
- `peer_identity(ssl_object)`: the URI SAN of the (already verified) peer certificate;
  `check_peer(ssl_object, expected=...)` raises PeerRejected unless it is `expected`.
- `verify_peer_certificate(leaf, intermediates=..., trust_anchors=..., expected=...)`: a full
  chain + SAN verification with `cryptography`, for certificates that did not come through a
  handshake (and as a second opinion in tests).

Loading a context never puts a key on a filesystem: Python's ssl can only load a certificate
chain and key from a path, so they are written to an anonymous memfd (os.memfd_create) and
loaded through /proc/self/fd/<n>; the memfd is closed, and its memory freed, right after
loading. (The agent does keep its pods' keys in one root-only file on the node's tmpfs, to
serve across its own restart: nodeagent.handover.servingstate.)
"""

from __future__ import annotations

import datetime
import functools
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from nodemesh.identity import SpiffeId

RENEW_FRACTION = 2 / 3


class PeerRejected(Exception):
    """The peer's certificate does not prove the identity we expected."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(identity: str | SpiffeId, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A PEM CSR for `identity`: empty subject (the identity is the URI SAN), signed by `key`."""
    uri = str(SpiffeId.parse(str(identity)))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def renewal_time(not_before: datetime.datetime, not_after: datetime.datetime) -> datetime.datetime:
    """When to ask for a new certificate: two-thirds of the way through its validity."""
    return not_before + (not_after - not_before) * RENEW_FRACTION


@dataclass(frozen=True)
class CertifiedKey:
    """A workload's private key and the certificate chain (leaf first) the CA issued for it."""

    identity: str
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    @classmethod
    def from_pem(
        cls, identity: str, key: ec.EllipticCurvePrivateKey, chain_pem: bytes | str
    ) -> CertifiedKey:
        data = chain_pem.encode() if isinstance(chain_pem, str) else chain_pem
        chain = tuple(x509.load_pem_x509_certificates(data))
        if uri_sans(chain[0]) != [identity]:
            raise PeerRejected(f"issued certificate is not for {identity}")
        if chain[0].public_key() != key.public_key():
            raise PeerRejected("issued certificate does not hold our public key")
        return cls(identity, key, chain)

    @property
    def not_before(self) -> datetime.datetime:
        return self.chain[0].not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def renew_at(self) -> datetime.datetime:
        return renewal_time(self.not_before, self.not_after)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _load_chain_from_memory(ctx: ssl.SSLContext, certified: CertifiedKey) -> None:
    key_pem = certified.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    data = memoryview(certified.chain_pem() + key_pem)
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
    """The SPIFFE ID of a peer whose chain OpenSSL verified during the handshake."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PeerRejected("peer sent no certificate")
    return _identity_of(der)


@functools.lru_cache(maxsize=512)
def _identity_of(der: bytes) -> str:
    # Every tunnel, both ends: the same few certificates again and again (a leaf lives 24 h),
    # so parse each once. Only what OpenSSL already verified gets here; a failure is not cached.
    sans = uri_sans(x509.load_der_x509_certificate(der))
    if len(sans) != 1:
        raise PeerRejected(f"peer certificate carries {len(sans)} URI SANs, expected one")
    return sans[0]


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, *, expected: str) -> None:
    """Raise PeerRejected unless the handshake's peer proved exactly `expected`."""
    actual = peer_identity(ssl_object)
    if actual != expected:
        raise PeerRejected(f"peer is {actual}, expected {expected}")


def load_trust_anchors(pem: bytes | str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)


def verify_peer_certificate(
    leaf: x509.Certificate,
    *,
    intermediates: list[x509.Certificate],
    trust_anchors: list[x509.Certificate],
    expected: str,
    now: datetime.datetime | None = None,
) -> None:
    """Raise PeerRejected unless `leaf` chains to `trust_anchors` with one URI SAN, `expected`."""
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(trust_anchors))
        .time(now or datetime.datetime.now(datetime.UTC))
        .max_chain_depth(2)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except verification.VerificationError as e:
        raise PeerRejected(f"certificate does not chain to the trust anchor: {e}") from e
    sans = uri_sans(leaf)
    if sans != [expected]:
        raise PeerRejected(f"certificate is for {sans}, expected {expected}")
