"""Identity.Certify through a real gRPC client and server on loopback (lab bootstrap tokens)."""

from collections.abc import AsyncIterator

import grpc
import pytest
from mesh_identities import EMOJI, WEB
from prometheus_client import CollectorRegistry

from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.identity import BootstrapTokenAuthenticator
from controlplane.identity.service import SERVICE, IdentityService
from nodemesh import certs, keymaker
from nodemesh.api import identity_pb2, identity_pb2_grpc

TOKENS = {"node1": "token-of-node1-" + "a" * 20, "node2": "token-of-node2-" + "b" * 20}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def stub(authority, registry) -> AsyncIterator[identity_pb2_grpc.IdentityStub]:
    service = IdentityService(authority=authority, registry=registry)
    auth = AgentAuthInterceptor(
        BootstrapTokenAuthenticator(TOKENS), refused={SERVICE: service.refused}
    )
    server = grpc.aio.server(interceptors=[auth])
    service.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield identity_pb2_grpc.IdentityStub(channel)
    finally:
        await server.stop(None)


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _count(registry: CollectorRegistry, result: str, reason: str) -> float:
    value = registry.get_sample_value(
        "nodemesh_identity_certificates_total", {"result": result, "reason": reason}
    )
    return value or 0.0


async def test_issues_to_the_node_running_the_workload(stub, registry, anchor) -> None:
    key = keymaker.new_key()
    reply = await stub.Certify(
        identity_pb2.CertifyRequest(csr=keymaker.make_csr(WEB, key), spiffe_id=WEB),
        metadata=_auth(TOKENS["node1"]),
    )
    held = certs.CertifiedKey.from_pem(WEB, keymaker.key_pem(key), reply.certificate_chain_pem)
    keymaker.verify_peer_certificate(
        keymaker.load_chain(held.chain_pem())[0],
        intermediates=keymaker.load_chain(held.chain_pem())[1:],
        trust_anchors=[anchor.certificate],
        expected=WEB,
    )
    assert reply.not_after_unix_ms - reply.not_before_unix_ms >= 24 * 3600 * 1000
    assert reply.renew_at_unix_ms == int(held.renew_at.timestamp() * 1000)
    assert _count(registry, "issued", "") == 1


async def test_refuses_another_nodes_workload(stub, registry) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Certify(
            identity_pb2.CertifyRequest(
                csr=keymaker.make_csr(EMOJI, keymaker.new_key()), spiffe_id=EMOJI
            ),
            metadata=_auth(TOKENS["node1"]),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node1" in caught.value.details()
    assert _count(registry, "refused", "no_pod_on_node") == 1


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        _auth("not-a-token"),
        _auth(TOKENS["node1"][:-1]),
        (("authorization", "Basic dXNlcjpwYXNz"),),
    ],
)
async def test_refuses_bad_or_missing_tokens(stub, registry, metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Certify(
            identity_pb2.CertifyRequest(
                csr=keymaker.make_csr(WEB, keymaker.new_key()), spiffe_id=WEB
            ),
            metadata=metadata,
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _count(registry, "refused", "unauthenticated") == 1


async def test_refuses_garbled_csr(stub, registry) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Certify(
            identity_pb2.CertifyRequest(csr=b"\x30\x03garbage", spiffe_id=WEB),
            metadata=_auth(TOKENS["node1"]),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PKCS#10" in caught.value.details()
    assert _count(registry, "refused", "garbled_csr") == 1


def test_issued_leaf_is_refused_by_a_foreign_anchor(authority, foreign_anchor) -> None:
    key = keymaker.new_key()
    issued = authority.certify(keymaker.make_csr(WEB, key), WEB, node="node1")
    with pytest.raises(certs.PeerRejected):
        keymaker.verify_peer_certificate(
            issued.chain[0],
            intermediates=list(issued.chain[1:]),
            trust_anchors=[foreign_anchor.certificate],
            expected=WEB,
        )
