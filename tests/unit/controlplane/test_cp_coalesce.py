"""A destination stream that fell behind sends the latest state once: the deltas queued for it
are merged (each object's last update or removal), so an agent the control plane reaches late
is not sent every step on the way, and ends with the same table as one that got every delta."""

from __future__ import annotations

import asyncio

import cp_objects as k

from controlplane.destination import DestinationHub, DestinationService, add_to_server
from controlplane.index import ClusterIndex
from controlplane.sources.events import EventType, ObjectChanged
from nodeagent.upstream.table import DestinationTable
from nodemesh.api import destination_pb2 as pb
from nodemesh.api import destination_pb2_grpc as pb_grpc

NS = "emojivoto"
STEPS = 40


def _extra_pod(i: int, *, node: str, ready: bool = True) -> dict:
    return k.pod(
        NS,
        f"web-5d8f7-x{i % 3}",  # three names, changed over and over
        node=node,
        ip=f"10.244.9.{i % 3 + 1}",
        owner=("ReplicaSet", "web-5d8f7"),
        sa="web",
        ready=ready,
        labels={"app": "web", "step": str(i)},
    )


def _changes(index: ClusterIndex, live: dict[str, dict], step: int) -> list:
    """Step `step` of the churn: pods of both nodes added, made unready, moved, deleted and
    added again, and the Service's slice rewritten to match."""
    pod = _extra_pod(step, node="node1" if step % 4 else "node2", ready=step % 5 != 0)
    name = pod["metadata"]["name"]
    if step % 7 == 3 and name in live:
        changes = list(index.apply(ObjectChanged(EventType.DELETED, "Pod", live.pop(name))))
    else:
        live[name] = pod
        changes = list(index.apply(ObjectChanged(EventType.ADDED, "Pod", pod)))
    pods = [o for o in k.web_app(replicas=2, nodes=2) if o["kind"] == "Pod"] + list(live.values())
    slice_ = k.endpointslice(NS, "web", pods)
    changes += index.apply(ObjectChanged(EventType.MODIFIED, "EndpointSlice", slice_))
    return changes


async def _read_until(call, revision: int) -> list[pb.Update]:
    got = []
    while not got or got[-1].revision < revision:
        got.append(await asyncio.wait_for(call.read(), 10))
    return got


def _table(node: str, updates: list[pb.Update]) -> DestinationTable:
    table = DestinationTable(node)
    for u in updates:
        table.apply(u)
    return table


async def test_a_stream_behind_by_many_deltas_gets_the_latest_state_in_fewer_messages(
    grpc_server, channels
) -> None:
    index = ClusterIndex(trust_domain="cluster.local")
    for obj in k.web_app(replicas=2, nodes=2):
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    hub = DestinationHub(index)
    address = await grpc_server(lambda server: add_to_server(DestinationService(hub), server))
    stub = pb_grpc.DestinationStub(channels(address))
    calls = {
        n: stub.Subscribe(pb.SubscribeRequest(node=n, agent_version="t"))
        for n in ("node1", "spare")
    }
    received: dict[str, list[pb.Update]] = {n: [] for n in calls}
    for node, call in calls.items():
        while True:
            update = await asyncio.wait_for(call.read(), 5)
            received[node].append(update)
            if update.snapshot.last:
                break
    # The loop does not reach the streams while these are published (as on a loaded control
    # plane): every delta waits in the streams' queues.
    published = 0
    live: dict[str, dict] = {}
    for step in range(STEPS):
        changes = _changes(index, live, step)
        if changes:
            hub.publish(changes, index.revision)
            published += 1
    assert published > 20
    for node, call in calls.items():
        deltas = await _read_until(call, index.revision)
        assert len(deltas) < published / 4, f"{node}: {len(deltas)} messages for {published} deltas"
        received[node] += deltas
        got = _table(node, received[node]).snapshot()
        fresh = _table(node, hub.snapshot(node)).snapshot()
        assert got == fresh, f"{node}'s table differs from a fresh snapshot's"
        assert {m.key.name for m in got.meshed_pods} >= {"web-5d8f7-x0", "web-5d8f7-x1"}
    for call in calls.values():
        call.cancel()
