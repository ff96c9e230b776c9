"""The agent API's TLS: a leaf from our own issuer, verified by a gRPC client holding ca.crt."""

import datetime

import grpc
import pytest
from mesh_identities import WEB
from prometheus_client import CollectorRegistry

from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.identity import BootstrapTokenAuthenticator
from controlplane.identity.service import IdentityService
from controlplane.identity.serving import DEFAULT_DNS_NAMES, ServingCertificate
from nodemesh import keymaker
from nodemesh.api import identity_pb2, identity_pb2_grpc

TOKEN = "node1-bootstrap-" + "q" * 24


async def _certify_over_tls(authority, anchors_pem: bytes) -> identity_pb2.CertifyResponse:
    auth = AgentAuthInterceptor(BootstrapTokenAuthenticator({"node1": TOKEN}))
    server = grpc.aio.server(interceptors=[auth])
    IdentityService(authority=authority, registry=CollectorRegistry()).add_to(server)
    port = server.add_secure_port("127.0.0.1:0", ServingCertificate(authority).credentials())
    await server.start()
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=anchors_pem)
        options = [("grpc.ssl_target_name_override", DEFAULT_DNS_NAMES[0])]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options) as channel:
            return await identity_pb2_grpc.IdentityStub(channel).Certify(
                identity_pb2.CertifyRequest(
                    csr=keymaker.make_csr(WEB, keymaker.new_key()), spiffe_id=WEB
                ),
                metadata=(("authorization", f"Bearer {TOKEN}"),),
                timeout=5,
            )
    finally:
        await server.stop(None)


async def test_agent_trusting_the_anchor_gets_through(authority, anchor) -> None:
    reply = await _certify_over_tls(authority, anchor.certificate_pem())
    assert "BEGIN CERTIFICATE" in reply.certificate_chain_pem


async def test_agent_with_another_anchor_does_not_connect(authority, foreign_anchor) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _certify_over_tls(authority, foreign_anchor.certificate_pem())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_serving_certificate_renews_at_two_thirds(authority) -> None:
    now = [datetime.datetime.now(datetime.UTC)]
    serving = ServingCertificate(authority, clock=lambda: now[0])
    first = serving.issued
    assert serving.renew_if_due() is None
    now[0] = first.renew_at + datetime.timedelta(seconds=1)
    assert serving.renew_if_due() is not None
    assert serving.issued.chain[0].serial_number != first.chain[0].serial_number
