"""Shared CA material for the identity tests (made once per session: key generation is slow)."""

from __future__ import annotations

import pytest
from mesh_identities import PODS, TD

from controlplane.identity import CertificateAuthority
from nodemesh.identity import CaMaterial, create_issuer, create_trust_anchor


@pytest.fixture(scope="session")
def anchor() -> CaMaterial:
    return create_trust_anchor(trust_domain=TD)


@pytest.fixture(scope="session")
def issuer(anchor: CaMaterial) -> CaMaterial:
    return create_issuer(anchor, trust_domain=TD)


@pytest.fixture(scope="session")
def foreign_anchor() -> CaMaterial:
    return create_trust_anchor(trust_domain=TD)


@pytest.fixture(scope="session")
def foreign_issuer(foreign_anchor: CaMaterial) -> CaMaterial:
    return create_issuer(foreign_anchor, trust_domain=TD)


@pytest.fixture
def authority(anchor: CaMaterial, issuer: CaMaterial) -> CertificateAuthority:
    return CertificateAuthority(
        anchors=[anchor.certificate],
        issuer=issuer,
        trust_domain=TD,
        pods_on_node=lambda node: iter(PODS.get(node, [])),
    )
