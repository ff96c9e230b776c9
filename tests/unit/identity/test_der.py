"""nodemesh.der (the agent's certificate reader, without cryptography) against cryptography's."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from mesh_identities import EMOJI, WEB

from controlplane.identity import CertificateAuthority
from nodemesh import certs, der, keymaker


def _self_signed(
    *,
    sans: list[x509.GeneralName] | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bytes:
    key = keymaker.new_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _as_cryptography_sees_it(data: bytes) -> der.CertFacts:
    cert = x509.load_der_x509_certificate(data)
    return der.CertFacts(
        cert.not_valid_before_utc, cert.not_valid_after_utc, tuple(keymaker.uri_sans(cert))
    )


def test_an_issued_leaf_reads_as_cryptography_reads_it(authority: CertificateAuthority) -> None:
    key = keymaker.new_key()
    issued = authority.certify(keymaker.make_csr(WEB, key), WEB, node="node1")
    leaf, issuer = der.pem_blocks(issued.chain_pem().encode(), "CERTIFICATE")
    assert der.leaf_facts(leaf) == _as_cryptography_sees_it(leaf)
    assert der.leaf_facts(leaf).uri_sans == (WEB,)
    assert der.leaf_facts(issuer) == _as_cryptography_sees_it(issuer)


@pytest.mark.parametrize(
    ("sans", "not_after"),
    [
        # Dates from 2050 on are GeneralizedTime, before it UTCTime.
        ([x509.UniformResourceIdentifier(WEB)], datetime.datetime(2061, 3, 4, 5, 6, 7)),
        (
            [
                x509.DNSName("web.shop"),
                x509.UniformResourceIdentifier(WEB),
                x509.UniformResourceIdentifier(EMOJI),
            ],
            datetime.datetime(2049, 12, 31, 23, 59, 59),
        ),
        (None, datetime.datetime(2030, 1, 1)),
        ([x509.DNSName("only.dns")], datetime.datetime(2030, 1, 1)),
    ],
)
def test_validity_and_uri_sans_match_cryptography(sans, not_after) -> None:
    data = _self_signed(sans=sans, not_before=datetime.datetime(1999, 1, 2), not_after=not_after)
    assert der.leaf_facts(data) == _as_cryptography_sees_it(data)


def test_what_is_not_a_certificate_is_refused() -> None:
    good = _self_signed(
        sans=[x509.UniformResourceIdentifier(WEB)],
        not_before=datetime.datetime(2020, 1, 1),
        not_after=datetime.datetime(2030, 1, 1),
    )
    for bad in (good[:-1], good + b"\x00", good[:40], b"", b"\x30\x80\x00\x00", b"\x04\x01a"):
        with pytest.raises(der.DerError):
            der.leaf_facts(bad)


def test_an_unreadable_or_foreign_chain_is_not_installed(authority: CertificateAuthority) -> None:
    key = keymaker.key_pem(keymaker.new_key())
    with pytest.raises(certs.PeerRejected, match="no certificate"):
        certs.CertifiedKey.from_pem(WEB, key, b"not a chain")
    garbage = b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"
    with pytest.raises(certs.PeerRejected, match="unreadable"):
        certs.CertifiedKey.from_pem(WEB, key, garbage)
    with pytest.raises(ValueError, match="not a PEM private key"):
        certs.CertifiedKey.from_pem(WEB, b"junk", garbage)
