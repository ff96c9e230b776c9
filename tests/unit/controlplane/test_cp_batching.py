"""Pod churn reaches agents in batches: what the source has ready at once becomes one delta per
agent, and within a batch each object's last change wins (as the agent's table sees it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import cp_objects as k

from controlplane.destination import DestinationHub
from controlplane.feed import Feed
from controlplane.index import ClusterIndex, PodRemoved, PodUpdated
from controlplane.sources.events import EventType, KindSynced, ObjectChanged, SourceEvent
from nodeagent.upstream.table import DestinationTable
from nodemesh.api import destination_pb2 as pb
from nodemesh.model import PodKey


def cluster() -> ClusterIndex:
    index = ClusterIndex(trust_domain="cluster.local")
    for obj in k.web_app(replicas=2):
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    return index


def agent_table(hub: DestinationHub, node: str) -> tuple[DestinationTable, asyncio.Queue]:
    sub, snapshot = hub.subscribe(node, "test")
    table = DestinationTable(node)
    for part in snapshot:
        table.apply(part)
    return table, sub.queue


async def test_a_pod_deleted_and_recreated_in_one_batch_stays_in_its_agents_table() -> None:
    index = cluster()
    hub = DestinationHub(index)
    table, queue = agent_table(hub, "node1")
    other, other_queue = agent_table(hub, "node2")
    key = PodKey("emojivoto", "web-5d8f7-0")
    assert key in table.pods and key in other.meshed_pods
    # A StatefulSet-like recreation: the same name deleted then created again, seen in one poll.
    pod_obj = next(o for o in k.web_app(replicas=2) if o["metadata"]["name"] == key.name)
    changes = index.apply(ObjectChanged(EventType.DELETED, "Pod", pod_obj))
    changes += index.apply(ObjectChanged(EventType.ADDED, "Pod", pod_obj))
    assert [type(c) for c in changes if isinstance(c, PodRemoved | PodUpdated)] == [
        PodRemoved,
        PodUpdated,
    ]
    hub.publish(changes, index.revision)
    while not queue.empty():
        table.apply(queue.get_nowait())
    while not other_queue.empty():
        other.apply(other_queue.get_nowait())
    assert key in table.pods, "the recreated pod vanished from its own node's table"
    assert key in other.meshed_pods


class Burst:
    """A source that lists the cluster, then has 40 new pods ready at once."""

    name = "burst"

    def __init__(self, objs: list[dict]) -> None:
        self.objs = objs
        self.done = asyncio.Event()

    async def events(self) -> AsyncIterator[SourceEvent]:
        for obj in k.web_app(replicas=2):
            yield ObjectChanged(EventType.ADDED, obj["kind"], obj)
        for kind in ("Namespace", "Node", "Deployment", "ReplicaSet", "Pod", "Service",
                     "EndpointSlice"):  # fmt: skip
            yield KindSynced(kind)
        await self.done.wait()
        for obj in self.objs:
            yield ObjectChanged(EventType.ADDED, "Pod", obj)
        await asyncio.Event().wait()


async def test_a_burst_of_pod_changes_reaches_an_agent_as_one_delta() -> None:
    index = ClusterIndex(trust_domain="cluster.local")
    hub = DestinationHub(index)
    pods = [
        k.pod("emojivoto", f"burst-{i}", node="node2", ip=f"10.244.2.{100 + i}",
              owner=("ReplicaSet", "web-5d8f7"), sa="web", labels={"app": "web"})
        for i in range(40)
    ]  # fmt: skip
    source = Burst(pods)
    feed = asyncio.get_running_loop().create_task(Feed(source, index, [hub.publish]).run())  # noqa: TID251
    try:
        for _ in range(100):
            if index.synced:
                break
            await asyncio.sleep(0.01)
        table, queue = agent_table(hub, "node1")
        source.done.set()
        for _ in range(200):
            if len(table.meshed_pods) + queue.qsize() and all(
                PodKey("emojivoto", p["metadata"]["name"]) in index.pods for p in pods
            ):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        updates: list[pb.Update] = []
        while not queue.empty():
            updates.append(queue.get_nowait())
        for u in updates:
            table.apply(u)
        assert all(PodKey("emojivoto", p["metadata"]["name"]) in table.meshed_pods for p in pods)
        # 40 pods (and the Workload they changed) as one message, not one per pod.
        assert len(updates) == 1, f"{len(updates)} deltas for one burst"
    finally:
        feed.cancel()
