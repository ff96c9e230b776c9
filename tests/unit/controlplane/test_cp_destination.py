"""Destination over real gRPC: snapshot, deltas from the local source, slow agents cut off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cp_objects as k
import grpc
import pytest

from controlplane.destination import DestinationHub, DestinationService
from controlplane.feed import Feed
from controlplane.index import ClusterIndex
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.sources.local import LocalSource
from nodemesh import destination_codec as codec
from nodemesh import tasks
from nodemesh.api import destination_pb2 as pb
from nodemesh.api import destination_pb2_grpc as pb_grpc


async def read(call: grpc.aio.UnaryStreamCall, timeout: float = 3.0) -> pb.Update:
    msg = await asyncio.wait_for(call.read(), timeout)
    assert msg is not grpc.aio.EOF
    return msg


async def read_snapshot(call: grpc.aio.UnaryStreamCall) -> pb.Snapshot:
    whole = pb.Snapshot()
    while True:
        update = await read(call)
        assert update.WhichOneof("kind") == "snapshot"
        whole.MergeFrom(update.snapshot)
        if update.snapshot.last:
            return whole


async def test_agent_gets_its_snapshot_then_a_delta_when_a_deployment_scales(
    tmp_path: Path, grpc_server, channels
) -> None:
    lab = k.LabDir(tmp_path)
    objs = k.web_app(replicas=2)
    for obj in objs:
        lab.put(obj)
    index = ClusterIndex(trust_domain="cluster.local")
    hub = DestinationHub(index)
    feed = Feed(LocalSource(tmp_path, interval=0.05), index, [hub.publish])
    feed_task = tasks.spawn(feed.run(), name="feed")
    try:
        address = await grpc_server(
            lambda s: pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), s)
        )
        for _ in range(100):
            if index.synced:
                break
            await asyncio.sleep(0.05)
        stub = pb_grpc.DestinationStub(channels(address))
        call = stub.Subscribe(pb.SubscribeRequest(node="node1", agent_version="test"))
        snap = await read_snapshot(call)
        assert [s.key.name for s in snap.services] == ["web"]
        assert [e.ip for e in snap.services[0].endpoints] == ["10.244.1.10", "10.244.2.11"]
        assert [(w.ref.kind, w.ref.name, list(w.identities)) for w in snap.workloads] == [
            ("Deployment", "web", ["spiffe://cluster.local/ns/emojivoto/sa/web"])
        ]
        # Only the pods on node1, with their mesh settings.
        assert [p.key.name for p in snap.pods] == ["web-5d8f7-0"]
        assert snap.pods[0].mesh.meshed and snap.pods[0].mesh.inbound_mode == pb.PERMISSIVE

        # Scale web to 3: the new pod lands on node1 and joins the Service's slice.
        dep = objs[2]
        dep["spec"]["replicas"] = 3
        lab.put(dep)
        new_pod = k.pod(
            "emojivoto",
            "web-5d8f7-2",
            node="node1",
            ip="10.244.1.12",
            owner=("ReplicaSet", "web-5d8f7"),
            sa="web",
            labels={"app": "web"},
        )
        lab.put(new_pod)
        pods = [o for o in objs if o["kind"] == "Pod"] + [new_pod]
        lab.put(k.endpointslice("emojivoto", "web", pods))

        seen_pod = seen_endpoint = False
        while not (seen_pod and seen_endpoint):
            update = await read(call)
            assert update.WhichOneof("kind") == "delta"
            for p in update.delta.pods_updated:
                info = codec.pod_from_pb(p)
                assert info.node == "node1"
                seen_pod |= info.key.name == "web-5d8f7-2" and info.workload.name == "web"
            for s in update.delta.services_updated:
                ips = [e.ip for e in codec.service_from_pb(s).endpoints]
                seen_endpoint |= "10.244.1.12" in ips
        call.cancel()
    finally:
        await tasks.cancel_all([feed_task])


async def test_subscribe_without_node_is_invalid(grpc_server, channels) -> None:
    hub = DestinationHub(ClusterIndex())
    address = await grpc_server(
        lambda s: pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), s)
    )
    stub = pb_grpc.DestinationStub(channels(address))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Subscribe(pb.SubscribeRequest()):
            pass
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_slow_subscriber_is_closed_and_counted_while_others_keep_up(
    grpc_server, channels
) -> None:
    index = ClusterIndex()
    for obj in k.web_app(replicas=2):
        index.apply(k_event(obj))
    hub = DestinationHub(index, queue_size=4, kill_after=30)
    address = await grpc_server(
        lambda s: pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), s)
    )
    # No BDP probing: the slow client's window stays small, so the server's writes block.
    slow = pb_grpc.DestinationStub(channels(address, **{"grpc.http2.bdp_probe": 0}))
    fast = pb_grpc.DestinationStub(channels(address))
    slow_call = slow.Subscribe(pb.SubscribeRequest(node="node1"))
    fast_call = fast.Subscribe(pb.SubscribeRequest(node="node1"))
    await read_snapshot(slow_call)
    await read_snapshot(fast_call)

    # Big deltas (a Service with many endpoints), published while only `fast` reads.
    received = 0
    published = 0
    pods = [
        k.pod("emojivoto", f"p{i}", node="node2", ip=f"10.244.{2 + i // 250}.{i % 250}", sa="web")
        for i in range(300)
    ]
    while hub.closed_slow == 0 and published < 2000:
        published += 1
        sl = k.endpointslice("emojivoto", "web", pods)
        sl["metadata"]["resourceVersion"] = str(published)
        sl["endpoints"][0]["conditions"]["ready"] = published % 2 == 0
        hub.publish(index.apply(k_event(sl)), index.revision)
        while received < published:
            await read(fast_call)
            received += 1
    assert hub.closed_slow == 1
    assert len(hub.subscribers) == 1  # the fast one is still subscribed

    # The slow agent, once it reads again, finds its stream ended with RESOURCE_EXHAUSTED.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            await asyncio.wait_for(slow_call.read(), 5)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "fell behind" in err.value.details()
    fast_call.cancel()


def k_event(obj: dict) -> ObjectChanged:
    return ObjectChanged(EventType.MODIFIED, obj["kind"], obj)
