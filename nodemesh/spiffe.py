"""SPIFFE IDs of meshed workloads: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.

Interface: `SpiffeId` (trust_domain, namespace, service_account); `SpiffeId.parse(uri)`,
`str(id)`, `spiffe_id(td, ns, sa) -> str`; `InvalidSpiffeId` (a ValueError) for anything
malformed. Apart from nodemesh.identity (which re-exports these) so that the agent can name
identities without loading `cryptography`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Trust domain per the SPIFFE spec: lowercase letters, digits, dots, dashes and underscores.
TRUST_DOMAIN_PATTERN = re.compile(r"^[a-z0-9._-]{1,255}$")
# Kubernetes names: a namespace is a DNS-1123 label, a service account a DNS-1123 subdomain.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class InvalidSpiffeId(ValueError):
    """A string that is not a nodemesh SPIFFE ID (spiffe://<td>/ns/<ns>/sa/<sa>)."""


@dataclass(frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not TRUST_DOMAIN_PATTERN.match(self.trust_domain):
            raise InvalidSpiffeId(f"invalid trust domain {self.trust_domain!r}")
        if not _DNS_LABEL.match(self.namespace):
            raise InvalidSpiffeId(f"invalid namespace {self.namespace!r}")
        if len(self.service_account) > 253 or not _DNS_SUBDOMAIN.match(self.service_account):
            raise InvalidSpiffeId(f"invalid service account {self.service_account!r}")

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse `uri`; raise InvalidSpiffeId unless it is exactly spiffe://<td>/ns/<ns>/sa/<sa>."""
        if not isinstance(uri, str) or not uri.startswith("spiffe://"):
            raise InvalidSpiffeId(f"not a spiffe:// URI: {uri!r}")
        rest = uri[len("spiffe://") :]
        parts = rest.split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise InvalidSpiffeId(f"expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>, got {uri!r}")
        return cls(parts[0], parts[2], parts[4])


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID string of a service account; raises InvalidSpiffeId for bad names."""
    return str(SpiffeId(trust_domain, namespace, service_account))
