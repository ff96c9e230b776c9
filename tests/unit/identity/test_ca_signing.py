"""The CA signs exactly one URI SAN for identities on the asking node, and refuses the rest."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mesh_identities import EMOJI, TD, WEB

from controlplane.identity import CertificateAuthority, Refused
from nodemesh import keymaker


def _csr(
    key=None,
    *,
    sans=(WEB,),
    extensions=(),
    subject=(),
    encoding=serialization.Encoding.PEM,
) -> bytes:
    key = key or keymaker.new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(list(subject)))
    if sans:
        names = [
            x509.UniformResourceIdentifier(s) if s.startswith("spiffe:") else x509.DNSName(s)
            for s in sans
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(encoding)


def _refusal(authority: CertificateAuthority, csr: bytes, *, ask=WEB, node="node1") -> Refused:
    with pytest.raises(Refused) as caught:
        authority.certify(csr, ask, node=node)
    return caught.value


def test_issues_a_leaf_that_verifies_against_the_anchor(authority, anchor, foreign_anchor) -> None:
    key = keymaker.new_key()
    issued = authority.certify(keymaker.make_csr(WEB, key), WEB, node="node1")
    leaf, issuer_cert = issued.chain

    issuer_cert.verify_directly_issued_by(anchor.certificate)
    leaf.verify_directly_issued_by(issuer_cert)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([anchor.certificate]))
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, [issuer_cert])
    assert [s.value for s in verified.subjects] == [WEB]
    foreign = (
        verification.PolicyBuilder()
        .store(verification.Store([foreign_anchor.certificate]))
        .build_client_verifier()
    )
    with pytest.raises(verification.VerificationError):
        foreign.verify(leaf, [issuer_cert])

    assert leaf.public_key() == key.public_key()
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(WEB)
    ]
    now = datetime.datetime.now(datetime.UTC)
    assert abs(leaf.not_valid_after_utc - now - datetime.timedelta(hours=24)).total_seconds() < 60
    assert leaf.not_valid_before_utc <= now
    lifetime = issued.not_after - issued.not_before
    assert issued.renew_at == issued.not_before + lifetime * 2 / 3


def test_der_csr_and_subject_naming_the_identity_are_accepted(authority) -> None:
    csr = _csr(
        subject=[x509.NameAttribute(NameOID.COMMON_NAME, WEB)],
        encoding=serialization.Encoding.DER,
    )
    assert authority.certify(csr, WEB, node="node1").identity == WEB


def test_refuses_an_identity_with_no_pod_on_the_asking_node(authority) -> None:
    refused = _refusal(authority, _csr(sans=(EMOJI,)), ask=EMOJI, node="node1")
    assert (refused.code, refused.reason) == ("permission_denied", "no_pod_on_node")
    assert "node1" in refused.message
    # The same request from the node that runs emoji is fine.
    assert authority.certify(_csr(sans=(EMOJI,)), EMOJI, node="node2").identity == EMOJI
    unknown = _refusal(authority, _csr(), node="node9")
    assert unknown.reason == "no_pod_on_node"


@pytest.mark.parametrize(
    ("sans", "reason"),
    [
        ((WEB, "evil.example.com"), "extra_san"),
        ((WEB, EMOJI), "extra_san"),
        ((), "missing_san"),
        ((EMOJI,), "san_mismatch"),
        (("web.emojivoto.svc.cluster.local",), "san_mismatch"),
    ],
)
def test_refuses_any_san_but_the_requested_one(authority, sans, reason) -> None:
    refused = _refusal(authority, _csr(sans=sans))
    assert (refused.code, refused.reason) == ("invalid_argument", reason)


@pytest.mark.parametrize(
    ("extension", "reason"),
    [
        (x509.BasicConstraints(ca=True, path_length=None), "ca_requested"),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            "ca_requested",
        ),
        (x509.OCSPNoCheck(), "extension"),
    ],
)
def test_refuses_csrs_asking_for_more(authority, extension, reason) -> None:
    refused = _refusal(authority, _csr(extensions=[(extension, True)]))
    assert refused.reason == reason


def test_never_issues_a_ca_even_when_the_csr_is_harmless(authority) -> None:
    csr = _csr(extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)])
    leaf = authority.certify(csr, WEB, node="node1").chain[0]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize(
    "key_factory",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        lambda: ec.generate_private_key(ec.SECP384R1()),
    ],
)
def test_refuses_other_key_types(authority, key_factory) -> None:
    assert _refusal(authority, _csr(key_factory())).reason == "key_type"


def test_refuses_a_forged_csr(authority) -> None:
    # A legitimate CSR for "abc" edited to say "web": the signature no longer matches.
    legit = _csr(sans=(f"spiffe://{TD}/ns/emojivoto/sa/abc",), encoding=serialization.Encoding.DER)
    forged = legit.replace(b"/sa/abc", b"/sa/web")
    assert forged != legit
    refused = _refusal(authority, forged)
    assert (refused.code, refused.reason) == ("invalid_argument", "bad_signature")

    flipped = bytearray(_csr(encoding=serialization.Encoding.DER))
    flipped[-3] ^= 0x55
    assert _refusal(authority, bytes(flipped)).reason in {"bad_signature", "garbled_csr"}


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00" * 300,
        b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
        b"\x30\x82\xff\xff" + b"\x01" * 64,
        b"x" * 20_000,
    ],
)
def test_refuses_garbled_csrs(authority, garbage) -> None:
    refused = _refusal(authority, garbage)
    assert (refused.code, refused.reason) == ("invalid_argument", "garbled_csr")


def test_refuses_a_truncated_csr(authority) -> None:
    der = _csr(encoding=serialization.Encoding.DER)
    assert _refusal(authority, der[: len(der) // 2]).reason == "garbled_csr"


def test_refuses_a_subject_that_does_not_match(authority) -> None:
    csr = _csr(subject=[x509.NameAttribute(NameOID.COMMON_NAME, "admin")])
    assert _refusal(authority, csr).reason == "subject"


@pytest.mark.parametrize(
    ("ask", "code", "reason"),
    [
        ("spiffe://other.domain/ns/emojivoto/sa/web", "permission_denied", "trust_domain"),
        ("not-a-spiffe-id", "invalid_argument", "invalid_id"),
    ],
)
def test_refuses_bad_requested_ids(authority, ask, code, reason) -> None:
    refused = _refusal(authority, _csr(sans=(ask,) if ask.startswith("spiffe") else ()), ask=ask)
    assert (refused.code, refused.reason) == (code, reason)
