"""Keys and CSRs for workload certificates, made with `cryptography`; also run as a child process.

Interface:
- `new_key()`, `key_pem(key) -> PKCS8 PEM bytes`, `make_csr(identity, key) -> PEM bytes`
  (empty subject, the SPIFFE ID as only SAN).
- `verify_peer_certificate(leaf, intermediates=..., trust_anchors=..., expected=...)`: a full
  chain + SAN verification, for certificates that did not come through a handshake (and as a
  second opinion in tests); `load_trust_anchors(pem)`, `load_chain(pem)`.
- `python -m nodemesh.keymaker`: reads a JSON list of SPIFFE IDs on stdin, writes
  {identity: {"key_pem": ..., "csr_pem": ...} or {"error": ...}} as JSON on stdout and exits.
  The agent runs it once per batch of renewals (nodeagent.upstream.keygen) so that
  `cryptography` (~10 MB resident) is never loaded into the long-lived agent process; the
  keys pass through the pipe only, never a file.
"""

from __future__ import annotations

import datetime
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

from nodemesh.certs import PeerRejected
from nodemesh.spiffe import SpiffeId


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


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


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def load_trust_anchors(pem: bytes | str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode() if isinstance(pem, str) else pem)


load_chain = load_trust_anchors


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


def main() -> int:
    identities = json.load(sys.stdin)
    if not isinstance(identities, list) or not all(isinstance(i, str) for i in identities):
        print("expected a JSON list of SPIFFE IDs on stdin", file=sys.stderr)
        return 2
    out = {}
    for identity in identities:
        key = new_key()
        try:
            csr = make_csr(identity, key)
        except ValueError as exc:
            out[identity] = {"error": str(exc)}
            continue
        out[identity] = {"key_pem": key_pem(key).decode(), "csr_pem": csr.decode()}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
