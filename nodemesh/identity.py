"""SPIFFE identities of meshed workloads, and the CA material (trust anchor + issuer) behind them.

Interface:
- `SpiffeId` (trust_domain, namespace, service_account); `SpiffeId.parse(uri)`, `str(id)`,
  `spiffe_id(td, ns, sa) -> str`; `InvalidSpiffeId` (a ValueError) for anything malformed.
- `create_trust_anchor(*, trust_domain)` and `create_issuer(anchor, *, trust_domain)` return a
  `CaMaterial` (certificate + ECDSA P-256 key), both valid one year.
- `create_issuer_files(directory, *, trust_domain, nodes)` writes ca.crt, issuer.crt, issuer.key
  (0600) and tokens.json ({node: bootstrap token}, 0600), each atomically (temp file + rename).
- `ca_secret_data(anchor_certificate, issuer)` gives the same three PEM files as a Secret's data.
The anchor key is never written anywhere: nothing needs it once the issuer is signed, and an
anchor key that does not exist cannot leak. Leaf certificates are signed by controlplane.identity.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodemesh.spiffe import TRUST_DOMAIN_PATTERN
from nodemesh.spiffe import InvalidSpiffeId as InvalidSpiffeId
from nodemesh.spiffe import SpiffeId as SpiffeId
from nodemesh.spiffe import spiffe_id as spiffe_id

DEFAULT_TRUST_DOMAIN = "cluster.local"
CA_LIFETIME = datetime.timedelta(days=365)
LEAF_LIFETIME = datetime.timedelta(hours=24)
# Certificates are back-dated a little so a node whose clock runs slightly behind accepts them.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(seconds=10)

CA_FILE = "ca.crt"
ISSUER_CERT_FILE = "issuer.crt"
ISSUER_KEY_FILE = "issuer.key"
TOKENS_FILE = "tokens.json"


@dataclass(frozen=True)
class CaMaterial:
    """A CA certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ca_certificate(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    signer: CaMaterial | None,
    path_length: int,
    now: datetime.datetime,
) -> x509.Certificate:
    issuer_name = signer.certificate.subject if signer else subject
    signing_key = signer.key if signer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
    return builder.sign(signing_key, hashes.SHA256())


def create_trust_anchor(
    *, trust_domain: str = DEFAULT_TRUST_DOMAIN, now: datetime.datetime | None = None
) -> CaMaterial:
    """A self-signed root, valid one year; path length 1 allows exactly one issuer below it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"root.{trust_domain}"),
        ]
    )
    cert = _ca_certificate(subject=subject, key=key, signer=None, path_length=1, now=now or _now())
    return CaMaterial(cert, key)


def create_issuer(
    anchor: CaMaterial,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    now: datetime.datetime | None = None,
) -> CaMaterial:
    """An intermediate signed by `anchor`, valid one year; path length 0: it signs leaves only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nodemesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"issuer.{trust_domain}"),
        ]
    )
    cert = _ca_certificate(
        subject=subject, key=key, signer=anchor, path_length=0, now=now or _now()
    )
    return CaMaterial(cert, key)


def ca_secret_data(anchor_certificate: x509.Certificate, issuer: CaMaterial) -> dict[str, bytes]:
    """The three PEM files the control plane loads, keyed as in the Secret and the lab directory."""
    return {
        CA_FILE: anchor_certificate.public_bytes(serialization.Encoding.PEM),
        ISSUER_CERT_FILE: issuer.certificate_pem(),
        ISSUER_KEY_FILE: issuer.key_pem(),
    }


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # The temp file is created with its final mode, so a key is never readable by others,
    # not even between creation and a later chmod.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class IssuerFiles:
    """What create_issuer_files wrote, with the material still in memory for the caller."""

    directory: Path
    anchor: CaMaterial
    issuer: CaMaterial
    tokens: dict[str, str]


def create_issuer_files(
    directory: str | os.PathLike[str],
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    nodes: Iterable[str],
) -> IssuerFiles:
    """Create a fresh anchor, issuer and per-node bootstrap tokens; write them to `directory`."""
    if not TRUST_DOMAIN_PATTERN.match(trust_domain):
        raise InvalidSpiffeId(f"invalid trust domain {trust_domain!r}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    anchor = create_trust_anchor(trust_domain=trust_domain)
    issuer = create_issuer(anchor, trust_domain=trust_domain)
    tokens = {node: secrets.token_urlsafe(32) for node in sorted(set(nodes))}
    files = ca_secret_data(anchor.certificate, issuer)
    _write_atomically(target / ISSUER_KEY_FILE, files[ISSUER_KEY_FILE], mode=0o600)
    _write_atomically(target / ISSUER_CERT_FILE, files[ISSUER_CERT_FILE], mode=0o644)
    _write_atomically(target / CA_FILE, files[CA_FILE], mode=0o644)
    _write_atomically(
        target / TOKENS_FILE, json.dumps(tokens, indent=2).encode() + b"\n", mode=0o600
    )
    return IssuerFiles(directory=target, anchor=anchor, issuer=issuer, tokens=tokens)
