"""A TLS server certificate for the agent API, issued at start-up by the mesh's own issuer."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from nodemesh.identity import CaMaterial

# Names agents may dial; the lab and tests use the loopback names.
DEFAULT_DNS = (
    "nodemesh-controlplane.nodemesh.svc",
    "nodemesh-controlplane.nodemesh.svc.cluster.local",
    "localhost",
)


def issue_serving_cert(
    issuer: CaMaterial,
    *,
    dns_names: tuple[str, ...] = DEFAULT_DNS,
    ips: tuple[str, ...] = ("127.0.0.1",),
    lifetime: datetime.timedelta = datetime.timedelta(days=30),
) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM: leaf then issuer)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + lifetime, issuer.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + issuer.certificate.public_bytes(
        serialization.Encoding.PEM
    )
    return key_pem, chain
