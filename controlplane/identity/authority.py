"""The control plane's CA: decides whether an agent may have a certificate, and signs it (sans-io).

`CertificateAuthority(anchors=..., issuer=..., trust_domain=..., pods_on_node=...)`:
- `certify(csr, requested_id, node=...) -> Issued` for an agent authenticated as `node`; it
  signs only identities that have a pod on that node (asked through `pods_on_node(node)`, which
  yields (namespace, service account) pairs) and raises `Refused` otherwise.
- `issue(identity, public_key, dns_names=()) -> Issued` signs without the node check, for the
  control plane's own serving certificate (see controlplane.identity.serving).
Leaves: 24 h, CA:false, key usage digital signature, EKU server + client auth, the one URI SAN.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.identity.csr import Refused, check_csr
from nodemesh.certs import renewal_time
from nodemesh.identity import (
    CLOCK_SKEW_ALLOWANCE,
    LEAF_LIFETIME,
    CaMaterial,
    InvalidSpiffeId,
    SpiffeId,
)

PodsOnNode = Callable[[str], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class Issued:
    identity: str
    chain: tuple[x509.Certificate, ...]  # leaf, issuer

    @property
    def not_before(self) -> datetime.datetime:
        return self.chain[0].not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def renew_at(self) -> datetime.datetime:
        return renewal_time(self.not_before, self.not_after)

    def chain_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain)


class CertificateAuthority:
    def __init__(
        self,
        *,
        anchors: list[x509.Certificate],
        issuer: CaMaterial,
        trust_domain: str,
        pods_on_node: PodsOnNode,
        lifetime: datetime.timedelta = LEAF_LIFETIME,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.anchors = anchors
        self.issuer = issuer
        self.trust_domain = trust_domain
        self.pods_on_node = pods_on_node
        self.lifetime = lifetime
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))

    def anchors_pem(self) -> str:
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in self.anchors)

    def certify(self, csr: bytes, requested_id: str, *, node: str) -> Issued:
        try:
            wanted = SpiffeId.parse(requested_id)
        except InvalidSpiffeId as e:
            raise Refused("invalid_argument", "invalid_id", f"bad SPIFFE ID: {e}") from e
        if wanted.trust_domain != self.trust_domain:
            raise Refused(
                "permission_denied",
                "trust_domain",
                f"{requested_id} is outside the trust domain {self.trust_domain}",
            )
        public_key = check_csr(csr, requested=requested_id)
        present = {(ns, sa) for ns, sa in self.pods_on_node(node)}
        if (wanted.namespace, wanted.service_account) not in present:
            raise Refused(
                "permission_denied",
                "no_pod_on_node",
                f"no pod with service account {wanted.service_account!r} in namespace "
                f"{wanted.namespace!r} runs on node {node!r}",
            )
        return self.issue(requested_id, public_key)

    def issue(
        self,
        identity: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> Issued:
        """Sign without the node check. `dns_names` and `ips` are only for the control plane's
        own serving certificate, which gRPC clients verify by host name (or address)."""
        uri = str(SpiffeId.parse(identity))
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        names += [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        now = self._clock()
        issuer_cert = self.issuer.certificate
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
            .not_valid_after(min(now + self.lifetime, issuer_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # The subject is empty, so RFC 5280 wants the SAN marked critical.
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer.key.public_key()),
                critical=False,
            )
            .sign(self.issuer.key, hashes.SHA256())
        )
        return Issued(uri, (leaf, issuer_cert))
