"""Load the CA (trust anchors + issuer) from the lab's files or a Kubernetes Secret, and check it.

Interface: `load_ca_from_directory(path) -> CaBundle`, `load_ca_from_secret(api_client,
namespace=..., name=...) -> CaBundle`, `ca_bundle_from_pem(files)`; `CaBundle.anchors` and
`CaBundle.issuer` feed CertificateAuthority. The Secret holds the keys ca.crt, issuer.crt and
issuer.key, as `nodemesh install` writes them. `InvalidCaMaterial` says what is wrong.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client as k8s

from nodemesh.identity import CA_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE, CaMaterial


class InvalidCaMaterial(ValueError):
    pass


@dataclass(frozen=True)
class CaBundle:
    anchors: list[x509.Certificate]
    issuer: CaMaterial


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def ca_bundle_from_pem(
    files: Mapping[str, bytes], *, now: datetime.datetime | None = None
) -> CaBundle:
    missing = [k for k in (CA_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE) if not files.get(k)]
    if missing:
        raise InvalidCaMaterial(f"missing {', '.join(missing)}")
    try:
        anchors = x509.load_pem_x509_certificates(files[CA_FILE])
        issuer_cert = x509.load_pem_x509_certificates(files[ISSUER_CERT_FILE])[0]
        key = serialization.load_pem_private_key(files[ISSUER_KEY_FILE], password=None)
    except (ValueError, TypeError) as e:
        raise InvalidCaMaterial(f"unreadable PEM: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidCaMaterial("issuer.key must be an ECDSA key")
    if key.public_key() != issuer_cert.public_key():
        raise InvalidCaMaterial("issuer.key does not belong to issuer.crt")
    if not _is_ca(issuer_cert) or not all(_is_ca(a) for a in anchors):
        raise InvalidCaMaterial("issuer.crt and ca.crt must be CA certificates")
    signed_by_anchor = False
    for anchor in anchors:
        try:
            issuer_cert.verify_directly_issued_by(anchor)
            signed_by_anchor = True
        except (ValueError, TypeError, InvalidSignature):
            continue
    if not signed_by_anchor:
        raise InvalidCaMaterial("issuer.crt is not signed by any certificate in ca.crt")
    now = now or datetime.datetime.now(datetime.UTC)
    if not issuer_cert.not_valid_before_utc <= now < issuer_cert.not_valid_after_utc:
        raise InvalidCaMaterial(
            f"issuer.crt is not valid now (valid {issuer_cert.not_valid_before_utc} "
            f"to {issuer_cert.not_valid_after_utc})"
        )
    return CaBundle(anchors, CaMaterial(issuer_cert, key))


def load_ca_from_directory(path: str | Path) -> CaBundle:
    """The lab's identity directory (/run/nodemesh/<lab>/identity)."""
    base = Path(path)
    files = {}
    for name in (CA_FILE, ISSUER_CERT_FILE, ISSUER_KEY_FILE):
        try:
            files[name] = (base / name).read_bytes()
        except FileNotFoundError:
            files[name] = b""
    return ca_bundle_from_pem(files)


def load_ca_from_secret(
    api_client: k8s.ApiClient, *, namespace: str = "nodemesh", name: str = "nodemesh-identity"
) -> CaBundle:
    secret = k8s.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
    data = secret.data or {}
    try:
        files = {k: base64.b64decode(v, validate=True) for k, v in data.items()}
    except ValueError as e:
        raise InvalidCaMaterial(f"secret {namespace}/{name}: bad base64: {e}") from e
    try:
        return ca_bundle_from_pem(files)
    except InvalidCaMaterial as e:
        raise InvalidCaMaterial(f"secret {namespace}/{name}: {e}") from e
