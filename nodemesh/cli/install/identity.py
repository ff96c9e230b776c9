"""The trust anchor and issuer `nodemesh install` puts in the identity Secret: generated, or the
user's own files, checked so a bad pair fails at install time rather than in the control plane."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nodemesh.identity import (
    CA_FILE,
    ISSUER_CERT_FILE,
    ISSUER_KEY_FILE,
    CaMaterial,
    ca_secret_data,
    create_issuer,
    create_trust_anchor,
)


class BadIdentity(ValueError):
    """Identity files that cannot serve as trust anchor and issuer; the message is for users."""


@dataclass(frozen=True)
class IdentityFiles:
    """PEM bytes keyed ca.crt, issuer.crt, issuer.key, plus the anchors' expiry for warnings."""

    data: dict[str, bytes]
    anchor_not_after: datetime.datetime
    issuer_not_after: datetime.datetime


def generate(*, trust_domain: str) -> IdentityFiles:
    anchor = create_trust_anchor(trust_domain=trust_domain)
    issuer = create_issuer(anchor, trust_domain=trust_domain)
    return IdentityFiles(
        ca_secret_data(anchor.certificate, issuer),
        anchor.certificate.not_valid_after_utc,
        issuer.certificate.not_valid_after_utc,
    )


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise BadIdentity(f"{flag} {path}: cannot read: {e.strerror}") from None


def load(*, anchors_file: Path, issuer_cert_file: Path, issuer_key_file: Path) -> IdentityFiles:
    """Read the user's files; the issuer must be a CA, match its key and be signed by an anchor."""
    anchors_pem = _read(anchors_file, "--identity-trust-anchors-file")
    cert_pem = _read(issuer_cert_file, "--identity-issuer-certificate-file")
    key_pem = _read(issuer_key_file, "--identity-issuer-key-file")
    try:
        anchors = x509.load_pem_x509_certificates(anchors_pem)
    except ValueError:
        raise BadIdentity(f"{anchors_file}: no PEM certificate in it") from None
    try:
        issuer_cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise BadIdentity(f"{issuer_cert_file}: no PEM certificate in it") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise BadIdentity(f"{issuer_key_file}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadIdentity(f"{issuer_key_file}: the issuer key must be an ECDSA key")
    if key.public_key().public_numbers() != issuer_cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise BadIdentity(f"{issuer_key_file} is not the key of {issuer_cert_file}")
    for cert, name in [(issuer_cert, issuer_cert_file)] + [(a, anchors_file) for a in anchors]:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca:
            raise BadIdentity(f"{name}: {cert.subject.rfc4514_string()} is not a CA certificate")
    signer = next((a for a in anchors if _signed_by(issuer_cert, a)), None)
    if signer is None:
        raise BadIdentity(f"{issuer_cert_file} is not signed by any trust anchor in {anchors_file}")
    now = datetime.datetime.now(datetime.UTC)
    for cert, name in ((issuer_cert, issuer_cert_file), (signer, anchors_file)):
        if cert.not_valid_after_utc <= now:
            raise BadIdentity(f"{name}: expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    issuer = CaMaterial(issuer_cert, key)
    data = ca_secret_data(signer, issuer)
    # Keep every anchor the user gave: rotating anchors means trusting old and new at once.
    data[CA_FILE] = b"".join(a.public_bytes(serialization.Encoding.PEM) for a in anchors)
    return IdentityFiles(data, signer.not_valid_after_utc, issuer_cert.not_valid_after_utc)


def _signed_by(cert: x509.Certificate, anchor: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


__all__ = [
    "BadIdentity",
    "IdentityFiles",
    "generate",
    "load",
    "ISSUER_CERT_FILE",
    "ISSUER_KEY_FILE",
]
