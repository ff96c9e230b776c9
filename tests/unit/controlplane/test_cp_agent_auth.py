"""The agent port's one authentication interceptor, through real gRPC on loopback: a call
proves which node's agent makes it before any service sees it, whatever the call's shape
(Destination's server stream, AgentTap's bidirectional stream written from a coroutine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.destination import DestinationHub, DestinationService
from controlplane.identity import (
    AgentNode,
    AuthenticatorUnavailable,
    BootstrapTokenAuthenticator,
)
from controlplane.index import ClusterIndex
from controlplane.tap import AgentTapService, TapBroker
from nodemesh.api import destination_pb2 as dpb
from nodemesh.api import destination_pb2_grpc as dpb_grpc
from nodemesh.api import tap_pb2 as tpb
from nodemesh.api import tap_pb2_grpc as tpb_grpc

TOKENS = {"node1": "node1-token-" + "a" * 24, "node2": "node2-token-" + "b" * 24}
DOWN = "api-server-down-" + "c" * 24


class Tokens(BootstrapTokenAuthenticator):
    """The lab's bootstrap tokens, and one token whose check cannot be made (API server down)."""

    async def authenticate(self, token: str) -> AgentNode:
        if token == DOWN:
            raise AuthenticatorUnavailable("TokenReview: the API server does not answer")
        return await super().authenticate(token)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    index = ClusterIndex(trust_domain="cluster.local")
    server = grpc.aio.server(interceptors=[AgentAuthInterceptor(Tokens(TOKENS))])
    dpb_grpc.add_DestinationServicer_to_server(DestinationService(DestinationHub(index)), server)
    tpb_grpc.add_AgentTapServicer_to_server(AgentTapService(TapBroker(index)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


def _as(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def _subscribe(channel: grpc.aio.Channel, token: str | None) -> grpc.StatusCode:
    call = dpb_grpc.DestinationStub(channel).Subscribe(
        dpb.SubscribeRequest(node="node1"), metadata=_as(token), timeout=10
    )
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as e:
        return e.code()
    assert first.snapshot.last
    call.cancel()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (TOKENS["node1"], grpc.StatusCode.OK),
        (TOKENS["node2"], grpc.StatusCode.PERMISSION_DENIED),  # another node's table
        ("guessed-" + "d" * 24, grpc.StatusCode.UNAUTHENTICATED),
        (None, grpc.StatusCode.UNAUTHENTICATED),
        # The token could not be checked: the agent should retry, not think it is refused.
        (DOWN, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_destination_stream_is_for_its_own_nodes_agent_only(
    channel, token: str | None, code: grpc.StatusCode
) -> None:
    assert await _subscribe(channel, token) == code


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (TOKENS["node2"], grpc.StatusCode.PERMISSION_DENIED),
        ("guessed-" + "d" * 24, grpc.StatusCode.UNAUTHENTICATED),
        (DOWN, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_tap_link_is_refused_before_the_hello_is_used(
    channel, token: str, code: grpc.StatusCode
) -> None:
    call = tpb_grpc.AgentTapStub(channel).Connect(metadata=_as(token))
    try:
        await call.write(tpb.AgentTapMessage(hello=tpb.AgentHello(node="node1", agent_version="t")))
    except grpc.aio.AioRpcError as e:  # refused before the hello was even sent: as good
        assert e.code() == code
        return
    assert await asyncio.wait_for(call.code(), 10) == code
