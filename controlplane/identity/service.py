"""The Identity gRPC service (grpc.aio): authenticate the agent, ask the CA, count the outcome.

Wire it with `IdentityService(authority=..., registry=...).add_to(server)` on a server whose
AgentAuthInterceptor (controlplane.agent_auth) authenticates the agent, with
`refused={SERVICE: service.refused}` so refusals are counted here; without one it issues nothing.
Metric: `nodemesh_identity_certificates_total{result="issued"|"refused", reason=...}` in the
registry given (default: prometheus_client's global one, registered once per process).
"""

from __future__ import annotations

import datetime
import logging

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from controlplane.agent_auth import calling_agent
from controlplane.identity.authority import CertificateAuthority
from controlplane.identity.csr import Refused
from nodemesh.api import identity_pb2, identity_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "nodemesh.identity.v1.Identity"

_STATUS = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
}

_counters: dict[int, tuple[CollectorRegistry, Counter]] = {}


def certificates_counter(registry: CollectorRegistry = REGISTRY) -> Counter:
    """The issued/refused counter of `registry`, created on first use (registries reject twins)."""
    held = _counters.get(id(registry))
    if held is None or held[0] is not registry:
        counter = Counter(
            "nodemesh_identity_certificates",
            "Certificate requests answered by the CA, by result and refusal reason",
            ["result", "reason"],
            registry=registry,
        )
        held = _counters[id(registry)] = (registry, counter)
    return held[1]


def _ms(dt: datetime.datetime) -> int:
    return int(dt.timestamp() * 1000)


class IdentityService(identity_pb2_grpc.IdentityServicer):
    def __init__(
        self,
        *,
        authority: CertificateAuthority,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.authority = authority
        self.certificates = certificates_counter(registry)

    def add_to(self, server: grpc.aio.Server) -> None:
        identity_pb2_grpc.add_IdentityServicer_to_server(self, server)

    def refused(self, reason: str, message: str, *, node: str = "?") -> None:
        self.certificates.labels("refused", reason).inc()
        log.warning("identity: refused a certificate for node %s (%s): %s", node, reason, message)

    async def Certify(  # noqa: N802 (gRPC method name)
        self, request: identity_pb2.CertifyRequest, context: grpc.aio.ServicerContext
    ) -> identity_pb2.CertifyResponse:
        agent = calling_agent()
        if agent is None:  # a server without the interceptor: certify no one
            self.refused("unauthenticated", "no authenticated agent")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no authenticated agent")
            return identity_pb2.CertifyResponse()  # not reached: abort raises
        try:
            issued = self.authority.certify(request.csr, request.spiffe_id, node=agent.node)
        except Refused as e:
            self.refused(e.reason, e.message, node=agent.node)
            await context.abort(_STATUS[e.code], e.message)
        self.certificates.labels("issued", "").inc()
        log.info(
            "identity: issued %s to node %s until %s", issued.identity, agent.node, issued.not_after
        )
        return identity_pb2.CertifyResponse(
            certificate_chain_pem=issued.chain_pem(),
            not_before_unix_ms=_ms(issued.not_before),
            not_after_unix_ms=_ms(issued.not_after),
            renew_at_unix_ms=_ms(issued.renew_at),
        )
