"""The Telemetry.Report stream through a real gRPC client and server on loopback."""

from collections.abc import AsyncIterator

import grpc
import pytest
from agent_reports import ReportBuilder
from prometheus_client import CollectorRegistry

from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.identity import BootstrapTokenAuthenticator
from controlplane.telemetry import Resource, TelemetryStore, stat
from controlplane.telemetry.service import MAX_RECEIVE_BYTES, METHOD, SERVICE, TelemetryService
from nodemesh.api import telemetry_pb2 as pb

TOKENS = {"node1": "t1-" + "x" * 30, "node2": "t2-" + "y" * 30, "node9": "t9-" + "z" * 30}
KNOWN = {"node1", "node2"}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def channel(store, registry) -> AsyncIterator[grpc.aio.Channel]:
    service = TelemetryService(store=store, is_known_node=KNOWN.__contains__, registry=registry)
    auth = AgentAuthInterceptor(
        BootstrapTokenAuthenticator(TOKENS), refused={SERVICE: service.refused}
    )
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)], interceptors=[auth]
    )
    service.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", MAX_RECEIVE_BYTES)]
        ) as ch:
            yield ch
    finally:
        await server.stop(None)


def _open(channel: grpc.aio.Channel, node: str | None):
    raw = channel.stream_stream(
        METHOD, request_serializer=lambda b: b, response_deserializer=pb.ReportAck.FromString
    )
    metadata = (("authorization", f"Bearer {TOKENS[node]}"),) if node else ()
    return raw(metadata=metadata)


async def _send(call, data: bytes) -> pb.ReportAck:
    await call.write(data)
    return await call.read()


def _count(registry, result: str, reason: str) -> float:
    labels = {"result": result, "reason": reason}
    return registry.get_sample_value("nodemesh_telemetry_reports_total", labels) or 0.0


async def test_reports_flow_and_bad_ones_are_refused_without_ending_the_stream(
    channel, store, clock, registry
) -> None:
    agent = ReportBuilder(node="node1")
    call = _open(channel, "node1")

    agent.request([1500] * 4)
    good = await _send(call, agent.report().SerializeToString())
    assert good.accepted and good.sequence == 1

    garbled = await _send(call, b"\xff\xff\xff\xff not protobuf")
    assert not garbled.accepted and garbled.reason.startswith("garbled")

    impostor = ReportBuilder(node="node2")
    impostor.request([1] * 1000)
    mismatch = await _send(call, impostor.report().SerializeToString())
    assert not mismatch.accepted and mismatch.reason.startswith("node_mismatch")

    agent.request([700] * 3)
    lying = agent.report()
    lying.requests[0].responses = 99  # histogram holds 3
    inconsistent = await _send(call, lying.SerializeToString())
    assert not inconsistent.accepted and "histogram holds 3" in inconsistent.reason

    huge = agent.report()
    huge.agent_version = "v" * (5 * 1024 * 1024)
    oversized = await _send(call, huge.SerializeToString())
    assert not oversized.accepted and oversized.reason.startswith("oversized")

    agent.request([2500] * 2)
    again = await _send(call, agent.report().SerializeToString())
    assert again.accepted
    await call.done_writing()

    (row,) = stat(store, Resource("deploy"), window_s=10, include_current=True)
    assert row.requests == 6  # nothing of the refused reports got in
    assert _count(registry, "accepted", "") == 2
    assert _count(registry, "refused", "garbled") == 2
    assert _count(registry, "refused", "node_mismatch") == 1
    assert _count(registry, "refused", "oversized") == 1
    assert registry.get_sample_value("nodemesh_telemetry_series") == len(store.request_series)


async def test_unknown_agent_is_refused(channel, store, registry) -> None:
    agent = ReportBuilder(node="node9")
    agent.request([10])
    call = _open(channel, "node9")
    ack = await _send(call, agent.report().SerializeToString())
    await call.done_writing()
    assert not ack.accepted and ack.reason.startswith("unknown_agent")
    assert not store.request_series and "node9" not in store.nodes
    assert _count(registry, "refused", "unknown_agent") == 1


async def test_stream_without_token_is_closed(channel, registry) -> None:
    call = _open(channel, None)
    with pytest.raises(grpc.aio.AioRpcError):
        await _send(call, ReportBuilder().report().SerializeToString())
    # The write can lose the race with the server's close and fail on its own (INTERNAL); the
    # call's status is what says why.
    assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _count(registry, "refused", "unauthenticated") == 1


async def test_generated_stub_talks_to_the_service(channel, store) -> None:
    from nodemesh.api import telemetry_pb2_grpc

    agent = ReportBuilder(node="node2")
    agent.request([42] * 5)
    stub = telemetry_pb2_grpc.TelemetryStub(channel)
    call = stub.Report(
        iter([agent.report()]), metadata=(("authorization", f"Bearer {TOKENS['node2']}"),)
    )
    acks = [ack async for ack in call]
    assert [a.accepted for a in acks] == [True]
    assert isinstance(store, TelemetryStore) and store.nodes["node2"].version == "test"
