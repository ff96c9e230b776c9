"""CA material for the data-plane tests (made once per session) and certificate helpers."""

from __future__ import annotations

import pytest
from dp_identities import PODS, TD

from controlplane.identity import CertificateAuthority
from nodemesh.identity import CaMaterial, create_issuer, create_trust_anchor


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
