"""A change's fan-out to the agents' streams: one encoding for every agent the delta is the same
for (500 agents' streams encoded each delta 500 times)."""

from __future__ import annotations

import asyncio

import cp_objects as k
import grpc

from controlplane.destination import DestinationHub, DestinationService, add_to_server
from controlplane.index import ClusterIndex
from controlplane.sources.events import EventType, ObjectChanged
from nodemesh.api import destination_pb2 as pb
from nodemesh.api import destination_pb2_grpc as pb_grpc

AGENTS = [f"spare{i}" for i in range(6)]  # nodes with no pods: every one gets the same delta


def _index(replicas: int) -> tuple[ClusterIndex, list]:
    index = ClusterIndex(trust_domain="cluster.local")
    changes = []
    for obj in k.web_app(replicas=replicas):
        changes += index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    return index, changes


async def test_a_delta_is_encoded_once_for_every_agent_it_is_the_same_for(
    grpc_server, channels
) -> None:
    index, _ = _index(replicas=2)
    hub = DestinationHub(index)
    registered = {}

    def register(server: grpc.aio.Server) -> None:
        registered["encoding"] = add_to_server(DestinationService(hub), server)

    address = await grpc_server(register)
    encoding = registered["encoding"]
    stub = pb_grpc.DestinationStub(channels(address))
    calls = [stub.Subscribe(pb.SubscribeRequest(node=n, agent_version="test")) for n in AGENTS]
    for call in calls:
        while not (await asyncio.wait_for(call.read(), 5)).snapshot.last:
            pass
    before = encoding.encoded
    bigger, changes = _index(replicas=3)  # a third web pod: a new endpoint and a meshed pod
    hub.index = bigger
    hub.publish(changes, bigger.revision)
    for call in calls:
        update = await asyncio.wait_for(call.read(), 5)
        assert [s.key.name for s in update.delta.services_updated] == ["web"]
        assert len(update.delta.services_updated[0].endpoints) == 3
    assert encoding.encoded - before == 1, "each stream encoded the same delta again"
    assert encoding.reused >= len(AGENTS) - 1
    for call in calls:
        call.cancel()
