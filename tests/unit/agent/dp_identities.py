"""Identities and a certificate helper shared by the data-plane tests (a uniquely named module:
`from conftest import ...` picks whichever conftest pytest imported first)."""

from __future__ import annotations

import datetime

from controlplane.identity import CertificateAuthority
from nodemesh import certs, keymaker

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"
PODS = {"node1": [("shop", "web"), ("shop", "api")]}


def issue(
    authority: CertificateAuthority,
    identity: str,
    *,
    lifetime: datetime.timedelta | None = None,
) -> certs.CertifiedKey:
    key = keymaker.new_key()
    if lifetime is not None:
        authority = CertificateAuthority(
            anchors=authority.anchors,
            issuer=authority.issuer,
            trust_domain=authority.trust_domain,
            pods_on_node=authority.pods_on_node,
            lifetime=lifetime,
        )
    issued = authority.issue(identity, key.public_key())
    return certs.CertifiedKey.from_pem(identity, keymaker.key_pem(key), issued.chain_pem())
