"""The control plane's certificate authority: CSR checks, signing, agent authentication, gRPC."""

from controlplane.identity.authn import (
    AgentNode,
    AuthenticationFailed,
    Authenticator,
    AuthenticatorUnavailable,
    BootstrapTokenAuthenticator,
    TokenReviewAuthenticator,
    bearer_token,
)
from controlplane.identity.authority import CertificateAuthority, Issued
from controlplane.identity.csr import Refused
from controlplane.identity.loading import (
    CaBundle,
    InvalidCaMaterial,
    load_ca_from_directory,
    load_ca_from_secret,
)

__all__ = [
    "AgentNode",
    "AuthenticationFailed",
    "Authenticator",
    "AuthenticatorUnavailable",
    "BootstrapTokenAuthenticator",
    "CaBundle",
    "CertificateAuthority",
    "InvalidCaMaterial",
    "Issued",
    "Refused",
    "TokenReviewAuthenticator",
    "bearer_token",
    "load_ca_from_directory",
    "load_ca_from_secret",
]
