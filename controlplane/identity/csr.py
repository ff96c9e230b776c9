"""Checks on a certificate signing request before the CA will look at it (sans-io).

`check_csr(data, requested=...)` returns the CSR's public key when the request is well-formed,
correctly self-signed, for an ECDSA P-256 key, names exactly `requested` as its one URI SAN and
asks for nothing else; otherwise it raises `Refused` with a reason label and a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

MAX_CSR_BYTES = 16 * 1024

# Extensions a CSR may carry. Whatever is allowed here is still never copied into the leaf:
# the CA builds every extension itself.
_ALLOWED_EXTENSIONS = (
    x509.SubjectAlternativeName,
    x509.BasicConstraints,
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
)


@dataclass
class Refused(Exception):
    """The CA will not sign. `code` is the gRPC status to answer with, `reason` a metric label."""

    code: str  # "invalid_argument" | "permission_denied" | "unauthenticated"
    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


def _invalid(reason: str, message: str) -> Refused:
    return Refused("invalid_argument", reason, message)


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    if not data:
        raise _invalid("garbled_csr", "the CSR is empty")
    if len(data) > MAX_CSR_BYTES:
        raise _invalid("garbled_csr", f"the CSR is larger than {MAX_CSR_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as e:
        raise _invalid(
            "garbled_csr", f"the CSR is neither a PEM nor a DER PKCS#10 request: {e}"
        ) from e


def _check_extensions(csr: x509.CertificateSigningRequest, requested: str) -> None:
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise _invalid("garbled_csr", f"the CSR's extensions cannot be read: {e}") from e
    sans: list[x509.GeneralName] | None = None
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise _invalid(
                "ca_requested", "the CSR asks for a CA certificate; only leaves are issued"
            )
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise _invalid("ca_requested", "the CSR asks for certificate or CRL signing")
        if not isinstance(value, _ALLOWED_EXTENSIONS):
            raise _invalid(
                "extension", f"the CSR carries an extension the CA refuses: {ext.oid.dotted_string}"
            )
        if isinstance(value, x509.SubjectAlternativeName):
            sans = list(value)
    if not sans:
        raise _invalid("missing_san", f"the CSR must carry {requested} as its URI SAN")
    if len(sans) != 1:
        raise _invalid(
            "extra_san", f"the CSR carries {len(sans)} SANs; only {requested} may be asked for"
        )
    only = sans[0]
    if not isinstance(only, x509.UniformResourceIdentifier) or only.value != requested:
        raise _invalid(
            "san_mismatch", f"the CSR's SAN {only.value!r} is not the requested {requested}"
        )


def _check_subject(csr: x509.CertificateSigningRequest, requested: str) -> None:
    try:
        attributes = list(csr.subject)
    except ValueError as e:
        raise _invalid("subject", f"the CSR's subject cannot be read: {e}") from e
    if not attributes:
        return
    if (
        len(attributes) == 1
        and attributes[0].oid == x509.NameOID.COMMON_NAME
        and attributes[0].value == requested
    ):
        return
    raise _invalid(
        "subject",
        f"the CSR's subject {csr.subject.rfc4514_string()!r} does not match; "
        f"leave it empty or set only CN={requested}",
    )


def check_csr(data: bytes, *, requested: str) -> ec.EllipticCurvePublicKey:
    """Validate a CSR for the SPIFFE ID `requested`; return its public key or raise Refused."""
    csr = parse_csr(data)
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as e:
        raise _invalid("key_type", f"the CSR's public key cannot be read: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _invalid("key_type", "the CSR's key must be ECDSA P-256")
    try:
        signed = csr.is_signature_valid
    except Exception as e:  # cryptography raises assorted errors for mangled signatures
        raise _invalid("bad_signature", f"the CSR's signature cannot be checked: {e}") from e
    if not signed:
        raise _invalid(
            "bad_signature", "the CSR's signature does not match its key (forged or corrupted)"
        )
    _check_extensions(csr, requested)
    _check_subject(csr, requested)
    return key
