"""TLS for the control plane's agent API (port 8086), with a certificate from its own issuer.

`ServingCertificate(authority, identity=..., dns_names=[...])` holds a key made in memory and a
leaf re-issued at two-thirds of its life; `.credentials()` gives grpc server credentials that
pick up each new leaf on the next handshake (grpc.dynamic_ssl_server_credentials). Agents have
no certificate yet when they first call Certify, so client certificates are not asked for: they
authenticate with their bearer token. Agents verify the server with
`grpc.ssl_channel_credentials(root_certificates=<ca.crt>)` and, when dialling an IP, the channel
option ("grpc.ssl_target_name_override", one of `dns_names`), since gRPC checks host names.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Sequence

import grpc
from cryptography.hazmat.primitives import serialization

from controlplane.identity.authority import CertificateAuthority, Issued
from nodemesh.keymaker import new_key

SERVICE_NAME = "nodemesh-controlplane"  # its Service and its ServiceAccount
DEFAULT_IPS = ("127.0.0.1",)


def serving_identity(*, namespace: str, trust_domain: str) -> str:
    """The control plane's own SPIFFE ID in the namespace it was installed into."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{SERVICE_NAME}"


def serving_dns_names(*, namespace: str, cluster_domain: str) -> tuple[str, ...]:
    """The names agents and the dashboard dial: its Service's, for the install's namespace and
    cluster domain (the manifests point agents at `<svc>.<ns>.svc.<domain>:8086`)."""
    return (
        f"{SERVICE_NAME}.{namespace}.svc",
        f"{SERVICE_NAME}.{namespace}.svc.{cluster_domain}",
        "localhost",  # agents and tests on the control plane's own host
    )


DEFAULT_IDENTITY = serving_identity(namespace="nodemesh", trust_domain="cluster.local")
DEFAULT_DNS_NAMES = serving_dns_names(namespace="nodemesh", cluster_domain="cluster.local")


class ServingCertificate:
    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        identity: str = DEFAULT_IDENTITY,
        dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
        ips: Sequence[str] = DEFAULT_IPS,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.authority = authority
        self.identity = identity
        self.dns_names = tuple(dns_names)
        self.ips = tuple(ips)
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        self.issued = self._issue()

    def _issue(self) -> Issued:
        self._key = new_key()
        return self.authority.issue(
            self.identity, self._key.public_key(), dns_names=self.dns_names, ips=self.ips
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return grpc.ssl_server_certificate_configuration(
            [(key_pem, self.issued.chain_pem().encode())],
            root_certificates=self.authority.anchors_pem().encode(),
        )

    def renew_if_due(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the current leaf is two-thirds through its life, else None."""
        with self._lock:
            if self._clock() < self.issued.renew_at:
                return None
            self.issued = self._issue()
            return self._configuration()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(), self.renew_if_due, require_client_authentication=False
        )
