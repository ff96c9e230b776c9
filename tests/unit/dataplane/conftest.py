"""CA material for the data-plane tests (made once per session) and certificate helpers."""

from __future__ import annotations

import datetime

import pytest

from controlplane.identity import CertificateAuthority
from nodemesh import certs
from nodemesh.identity import CaMaterial, create_issuer, create_trust_anchor

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"
PODS = {"node1": [("shop", "web"), ("shop", "api")]}


@pytest.fixture(scope="session")
def anchor() -> CaMaterial:
    return create_trust_anchor(trust_domain=TD)


@pytest.fixture(scope="session")
def authority(anchor: CaMaterial) -> CertificateAuthority:
    return CertificateAuthority(
        anchors=[anchor.certificate],
        issuer=create_issuer(anchor, trust_domain=TD),
        trust_domain=TD,
        pods_on_node=lambda node: iter(PODS.get(node, [])),
    )


@pytest.fixture(scope="session")
def foreign_authority() -> CertificateAuthority:
    other = create_trust_anchor(trust_domain=TD)
    return CertificateAuthority(
        anchors=[other.certificate],
        issuer=create_issuer(other, trust_domain=TD),
        trust_domain=TD,
        pods_on_node=lambda node: iter(PODS.get(node, [])),
    )


def issue(
    authority: CertificateAuthority,
    identity: str,
    *,
    lifetime: datetime.timedelta | None = None,
) -> certs.CertifiedKey:
    key = certs.new_key()
    if lifetime is not None:
        authority = CertificateAuthority(
            anchors=authority.anchors,
            issuer=authority.issuer,
            trust_domain=authority.trust_domain,
            pods_on_node=authority.pods_on_node,
            lifetime=lifetime,
        )
    issued = authority.issue(identity, key.public_key())
    return certs.CertifiedKey.from_pem(identity, key, issued.chain_pem())
