"""Every agent learns every meshed pod of the cluster (a pod IP that backs no Service too), in a
few fields each; a change that does not touch those fields costs the other agents nothing; a
control plane that is still listing hands out no table."""

from __future__ import annotations

import asyncio

import cp_objects as k

from controlplane.destination import DestinationHub, DestinationService
from controlplane.index import ClusterIndex
from controlplane.sources.events import KINDS, EventType, KindSynced, ObjectChanged
from nodeagent.proxy.routing import Routes
from nodeagent.upstream.table import DestinationTable
from nodemesh.api import destination_pb2 as pb
from nodemesh.api import destination_pb2_grpc as pb_grpc


def ev(obj: dict, kind: EventType = EventType.MODIFIED) -> ObjectChanged:
    return ObjectChanged(kind, obj["kind"], obj)


def _cluster() -> tuple[ClusterIndex, list[dict]]:
    index = ClusterIndex()
    objs = [
        k.namespace("db"),
        k.namespace("plain", meshed=False),
        k.node(1),
        k.node(2),
        # A StatefulSet-like pod on node2 that no Service selects, and an unmeshed neighbour.
        k.pod("db", "db-0", node="node2", ip="10.244.2.20", sa="db"),
        k.pod("plain", "tool", node="node2", ip="10.244.2.21"),
    ]
    for obj in objs:
        index.apply(ev(obj))
    return index, objs


def _merged(parts: list[pb.Update]) -> pb.Snapshot:
    whole = pb.Snapshot()
    for p in parts:
        whole.MergeFrom(p.snapshot)
    return whole


def test_the_snapshot_of_another_node_carries_meshed_pods_that_back_no_service() -> None:
    index, _ = _cluster()
    hub = DestinationHub(index)
    snap = _merged(hub.snapshot("node1"))
    assert not snap.services and not snap.pods  # nothing of node1's own, no Service at all
    (db,) = snap.meshed_pods
    assert (db.key.namespace, db.key.name, db.ip, db.node) == ("db", "db-0", "10.244.2.20", "node2")
    assert db.identity == "spiffe://cluster.local/ns/db/sa/db"
    assert (db.workload.kind, db.workload.name) == ("Pod", "db-0")
    # What node1's agent does with it: a tunnel to the pod IP, with the identity to check.
    table = DestinationTable("node1")
    table.apply(pb.Update(revision=index.revision, snapshot=snap))
    (target,) = Routes(table).resolve("10.244.2.20", 5432).targets
    assert target.meshed and target.identity == db.identity
    assert not Routes(table).resolve("10.244.2.21", 80).known  # unmeshed: plain, as today


def test_deltas_add_and_remove_meshed_pods_for_every_agent_and_skip_unrelated_changes() -> None:
    index, objs = _cluster()
    hub = DestinationHub(index)
    sub, snapshot = hub.subscribe("node1", "test")
    table = DestinationTable("node1")
    for part in snapshot:
        table.apply(part)

    def publish(obj: dict, kind: EventType = EventType.MODIFIED) -> list[pb.Update]:
        hub.publish(index.apply(ev(obj, kind)), index.revision)
        out = []
        while not sub.queue.empty():
            update = sub.queue.get_nowait()
            assert isinstance(update, pb.Update)
            table.apply(update)
            out.append(update)
        return out

    # A new meshed pod on node2: node1 hears of it.
    publish(k.pod("db", "db-1", node="node2", ip="10.244.2.22", sa="db"))
    assert Routes(table).resolve("10.244.2.22", 5432).targets[0].meshed
    # Its readiness flips: nothing another agent needs, so nothing is sent to node1.
    assert publish(k.pod("db", "db-1", node="node2", ip="10.244.2.22", sa="db", ready=False)) == []
    # Opted out of the mesh: removed from every agent's list; its IP is then plainly unmeshed.
    (update,) = publish(
        k.pod("db", "db-1", node="node2", ip="10.244.2.22", sa="db",
              labels={"nodemesh.io/mesh": "disabled"})
    )  # fmt: skip
    assert [p.name for p in update.delta.meshed_pods_removed] == ["db-1"]
    assert not Routes(table).resolve("10.244.2.22", 5432).known
    # Deleted: gone too.
    publish(objs[4], EventType.DELETED)
    assert not Routes(table).resolve("10.244.2.20", 5432).known
    assert table.meshed_pods == {}
    hub.unsubscribe(sub)


def test_size_per_remote_pod_stays_small() -> None:
    index = ClusterIndex()
    index.apply(ev(k.namespace("big")))
    for i in range(1000):
        index.apply(ev(k.pod("big", f"p-{i}", node="node2", ip=f"10.244.{2 + i // 250}.{i % 250}",
                             labels={"app": "big", "tier": "backend", "version": "v1"})))  # fmt: skip
    parts = DestinationHub(index).snapshot("node1")
    meshed = [m for p in parts for m in p.snapshot.meshed_pods]
    assert len(meshed) == 1000 and not any(p.snapshot.pods for p in parts)
    size = sum(m.ByteSize() for m in meshed)
    # Labels and the rest of a pod record stay home: about 100 bytes a pod, so a 10,000-pod
    # cluster adds about a megabyte to each agent's snapshot.
    assert size / 1000 < 120, size


async def test_a_starting_control_plane_sends_no_table_before_it_has_listed_everything(
    grpc_server, channels
) -> None:
    index = ClusterIndex()
    index.apply(ev(k.namespace("db")))  # listing has begun: db-0 is not in yet
    hub = DestinationHub(index)
    address = await grpc_server(
        lambda s: pb_grpc.add_DestinationServicer_to_server(
            DestinationService(hub, wait_for_index=True), s
        )
    )
    call = pb_grpc.DestinationStub(channels(address)).Subscribe(pb.SubscribeRequest(node="node1"))
    first = asyncio.ensure_future(call.read())
    await asyncio.sleep(0.5)
    # An agent given this half table would take db-0 for unmeshed and reach it in plaintext.
    assert not first.done()
    hub.publish(index.apply(ev(k.pod("db", "db-0", node="node2", ip="10.244.2.20", sa="db"))), 1)
    for kind in KINDS:
        index.apply(KindSynced(kind))
    parts = [await asyncio.wait_for(first, 5)]
    while not parts[-1].snapshot.last:
        parts.append(await asyncio.wait_for(call.read(), 5))
    assert [p.key.name for u in parts for p in u.snapshot.meshed_pods] == ["db-0"]
    call.cancel()
