"""Destination service: a snapshot for the agent's node, then deltas, through a bounded queue.

Services and workloads go to every agent whole; full pod records only to the agent of their node;
every meshed pod of the cluster goes to every agent as a `MeshedPod` (IP, identity, workload,
mode, opaque ports: a few dozen bytes), so a pod IP that backs no Service is tunnelled too.

A stream the loop reaches late (a loaded control plane with hundreds of agents) finds several
deltas queued: it sends them merged into one (each object's latest update or removal), so a slow
stream catches up with one message of the latest state rather than every step on the way. The
merge is made once for every stream behind by the same deltas (`DestinationHub.take`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from controlplane import authz as authz_views
from controlplane.agent_auth import check_agent
from controlplane.index import (
    Change,
    ClusterIndex,
    PodRemoved,
    PodUpdated,
    PolicyRemoved,
    PolicyUpdated,
    RouteRemoved,
    RouteUpdated,
    ServiceRemoved,
    ServiceUpdated,
    WorkloadRemoved,
    WorkloadUpdated,
)
from controlplane.metrics import (
    DESTINATION_MERGED,
    DESTINATION_OVERFLOWS,
    DESTINATION_SUBSCRIBERS,
    DESTINATION_UPDATES,
)
from nodemesh import authz, authz_codec
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb
from nodemesh.api import destination_pb2_grpc as pb_grpc
from nodemesh.model import MeshedPod, PodKey
from nodemesh.routing import codec as route_codec

log = logging.getLogger(__name__)
V = TypeVar("V")

_OVERFLOWED = object()
# Parts of a snapshot, so one message stays far below gRPC's default 4 MiB receive limit.
SNAPSHOT_PART = 500
INDEX_POLL = 0.1
SERVICE = "nodemesh.destination.v1.Destination"


@dataclass(eq=False)
class Subscriber:
    node: str
    agent_version: str
    queue: asyncio.Queue[pb.Update | object]
    task: asyncio.Task[object] | None = None
    overflowed: bool = False
    _kill: asyncio.TimerHandle | None = field(default=None, repr=False)


class DestinationHub:
    """Fans index changes out to subscribers. `publish` never waits: a full queue closes that
    subscriber (it reconnects and gets a fresh snapshot) instead of holding up the index."""

    def __init__(self, index: ClusterIndex, *, queue_size: int = 1000, kill_after: float = 10.0):
        self.index = index
        self.queue_size = queue_size
        self.kill_after = kill_after
        self.subscribers: set[Subscriber] = set()
        self.closed_slow = 0
        # What every agent was last told of each meshed pod, so a change that does not touch
        # those fields (readiness, labels) costs the other agents nothing.
        self.meshed: dict[PodKey, MeshedPod] = {}
        self._shared_parts: tuple[int, int, Any, list[pb.Update]] | None = None
        # Deltas merged for streams that fell behind, by the queued updates they merge: the
        # streams behind by the same deltas (every agent without pods in them) share one merge,
        # and through it one encoding.
        self._merged: ByIdentity[pb.Update] = ByIdentity(MERGED_KEPT)
        self.merged = 0
        # The authorization policies each node's agents were last given (compiled for it).
        self.authz_sent: dict[str, dict[authz.PolicyKey, authz.Policy]] = {}
        for pod in index.pods.values():
            if (mp := MeshedPod.of(pod)) is not None:
                self.meshed[pod.key] = mp

    def subscribe(self, node: str, agent_version: str) -> tuple[Subscriber, list[pb.Update]]:
        """Register and return the snapshot; nothing can change the index in between."""
        sub = Subscriber(node, agent_version, asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        DESTINATION_SUBSCRIBERS.set(len(self.subscribers))
        return sub, self.snapshot(node)

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if sub._kill is not None:
            sub._kill.cancel()
        DESTINATION_SUBSCRIBERS.set(len(self.subscribers))

    def snapshot(self, node: str) -> list[pb.Update]:
        revision = self.index.revision
        pods = [codec.pod_to_pb(p) for p in self.index.pods_on_node(node)]
        view = self._authz_view(node)
        self.authz_sent[node] = view
        policies = [authz_codec.policy_to_pb(p) for p in view.values()]
        own = (("pods", pods), ("authz_policies", policies))  # this node's alone
        # Services, workloads, routes and meshed pods are the same for every agent: their parts
        # are made once per revision and shared (a control plane restart meets every agent at
        # once; 500 agents each holding its own copy of 1,000 Services took gigabytes).
        if self._shared_parts is None or self._shared_parts[0] != revision:
            services = [codec.service_to_pb(s) for _, s in sorted(self.index.services.items())]
            workloads = [codec.workload_to_pb(w) for _, w in sorted(self.index.workloads.items())]
            routes = [route_codec.route_to_pb(r) for _, r in sorted(self.index.routes.items())]
            meshed = [codec.meshed_pod_to_pb(m) for _, m in sorted(self.meshed.items())]
            kinds = (
                ("services", services),
                ("workloads", workloads),
                ("routes", routes),
                ("meshed_pods", meshed),
            )
            size = len(services) + len(workloads) + len(routes) + len(meshed)
            self._shared_parts = (revision, size, kinds, _parts(revision, kinds))
        _, size, kinds, shared = self._shared_parts
        if size + len(pods) + len(policies) <= SNAPSHOT_PART:
            return _parts(revision, (*own, *kinds))  # small: one message
        return _parts(revision, own, last=False) + shared

    def _authz_view(self, node: str) -> dict[authz.PolicyKey, authz.Policy]:
        return authz_views.node_view(
            self.index.policies,
            self.index.pods_on_node(node),
            trust_domain=self.index.trust_domain,
        )

    def _authz_deltas(self, changes: list[Change], by_node: dict[str, pb.Delta]) -> None:
        """Recompile the policies of the subscribed nodes a change can affect (every node for a
        policy change, the pod's node for a pod change) and add what differs to their delta."""
        nodes = {sub.node for sub in self.subscribers}
        if any(isinstance(c, (PolicyUpdated, PolicyRemoved)) for c in changes):
            affected = nodes
        else:
            affected = {
                c.pod.node if isinstance(c, PodUpdated) else c.node
                for c in changes
                if isinstance(c, (PodUpdated, PodRemoved))
            } & nodes
        for node in sorted(affected):
            after = self._authz_view(node)
            updated, removed = authz_views.diff(self.authz_sent.get(node, {}), after)
            self.authz_sent[node] = after
            if updated or removed:
                delta = by_node.setdefault(node, pb.Delta())
                delta.authz_policies_updated.extend(authz_codec.policy_to_pb(p) for p in updated)
                delta.authz_policies_removed.extend(authz_codec.key_to_pb(k) for k in removed)

    def publish(self, changes: list[Change], revision: int) -> None:
        """One delta per node for a batch of changes (the feed hands over all it has at once).
        Within a batch each object's last change wins: an agent applies a delta's updates before
        its removals, so a pod removed and re-added in one batch must arrive as an update only."""
        if not changes:
            return
        meshed: dict[PodKey, MeshedPod | None] = {}
        for c in changes:
            # Kept current even with no subscriber: the next one's snapshot is made from it.
            if isinstance(c, PodUpdated):
                meshed[c.pod.key] = MeshedPod.of(c.pod)
            elif isinstance(c, PodRemoved) and self.index.pods.get(c.key) is None:
                meshed[c.key] = None
        shared = pb.Delta()
        for key, now in meshed.items():
            if now == self.meshed.get(key):
                continue  # nothing the other agents use changed (readiness, labels)
            if now is None:
                del self.meshed[key]
                shared.meshed_pods_removed.append(codec.pod_key_to_pb(key))
            else:
                self.meshed[key] = now
                shared.meshed_pods_updated.append(codec.meshed_pod_to_pb(now))
        if not self.subscribers:
            return
        services: dict[Any, Any] = {}
        workloads: dict[Any, Any] = {}
        routes: dict[Any, Any] = {}
        pods: dict[str, dict[PodKey, Any]] = {}
        for c in changes:
            if isinstance(c, ServiceUpdated):
                services[c.service.key] = c.service
            elif isinstance(c, ServiceRemoved):
                services[c.key] = None
            elif isinstance(c, WorkloadUpdated):
                workloads[c.workload.ref] = c.workload
            elif isinstance(c, WorkloadRemoved):
                workloads[c.ref] = None
            elif isinstance(c, RouteUpdated):
                routes[c.route.key] = c.route
            elif isinstance(c, RouteRemoved):
                routes[c.key] = None
            elif isinstance(c, PodUpdated):
                pods.setdefault(c.pod.node, {})[c.pod.key] = c.pod
            elif isinstance(c, PodRemoved):
                pods.setdefault(c.node, {})[c.key] = None
        for skey, service in services.items():
            if service is None:
                shared.services_removed.append(codec.service_key_to_pb(skey))
            else:
                shared.services_updated.append(codec.service_to_pb(service))
        for ref, workload in workloads.items():
            if workload is None:
                shared.workloads_removed.append(codec.workload_ref_to_pb(ref))
            else:
                shared.workloads_updated.append(codec.workload_to_pb(workload))
        for rkey, compiled in routes.items():
            if compiled is None:
                shared.routes_removed.append(route_codec.route_key_to_pb(rkey))
            else:
                shared.routes_updated.append(route_codec.route_to_pb(compiled))
        by_node: dict[str, pb.Delta] = {}
        for node, held in pods.items():
            delta = by_node[node] = pb.Delta()
            for pkey, pod in held.items():
                if pod is None:
                    delta.pods_removed.append(codec.pod_key_to_pb(pkey))
                else:
                    delta.pods_updated.append(codec.pod_to_pb(pod))
        self._authz_deltas(changes, by_node)
        has_shared = shared.ByteSize() > 0
        common = pb.Update(revision=revision, delta=shared)
        per_node: dict[str, pb.Update] = {}
        for sub in list(self.subscribers):
            update = per_node.get(sub.node)
            if update is None:
                own = by_node.get(sub.node)
                if own is None:
                    if not has_shared:
                        continue
                    update = common
                else:
                    delta = pb.Delta()
                    delta.CopyFrom(shared)
                    delta.MergeFrom(own)
                    update = pb.Update(revision=revision, delta=delta)
                per_node[sub.node] = update
            try:
                sub.queue.put_nowait(update)
            except asyncio.QueueFull:
                self._overflow(sub)

    def take(self, first: pb.Update | object, sub: Subscriber) -> pb.Update | object:
        """What a stream sends next: `first` (just taken from its queue) and, when more updates
        wait behind it, all of them merged into one delta. A stream the loop reached late
        sends the latest state of each object once, not every step on the way to it."""
        if first is _OVERFLOWED or sub.queue.empty():
            return first
        held = [first]
        while not sub.queue.empty():
            item = sub.queue.get_nowait()
            if item is _OVERFLOWED:
                return item
            held.append(item)
        updates = tuple(u for u in held if isinstance(u, pb.Update))
        DESTINATION_MERGED.inc(len(updates) - 1)
        kept = self._merged.get(updates)
        if kept is not None:
            return kept
        update = merge_deltas(updates)
        self.merged += 1
        self._merged.put(updates, update)
        return update

    def _overflow(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        DESTINATION_SUBSCRIBERS.set(len(self.subscribers))
        self.closed_slow += 1
        DESTINATION_OVERFLOWS.inc()
        sub.overflowed = True
        log.warning("destination stream of node %s fell behind; closing it", sub.node)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(_OVERFLOWED)
        # A handler stuck writing to a client that stopped reading never sees the marker;
        # cancelling it ends the RPC and frees what it holds.
        if sub.task is not None:
            sub._kill = asyncio.get_running_loop().call_later(self.kill_after, sub.task.cancel)


# Each repeated field of a Delta that updates objects, the field that removes them, and how an
# updated object names its key (which is what the removal carries).
_DELTA_KINDS = (
    ("services_updated", "services_removed", "key"),
    ("workloads_updated", "workloads_removed", "ref"),
    ("pods_updated", "pods_removed", "key"),
    ("meshed_pods_updated", "meshed_pods_removed", "key"),
    ("authz_policies_updated", "authz_policies_removed", "key"),
    ("routes_updated", "routes_removed", "key"),
)
MERGED_KEPT = 64


def merge_deltas(updates: Sequence[pb.Update]) -> pb.Update:
    """One delta with the effect of applying `updates` (deltas) in order: each object's last
    update or removal, once. (Concatenating them would not do: an agent applies a delta's
    updates before its removals, so a pod removed and then re-added would end up removed.)"""
    merged = pb.Delta()
    for updated_field, removed_field, key_field in _DELTA_KINDS:
        last: dict[bytes, tuple[bool, Message]] = {}
        for u in updates:
            delta = u.delta
            for obj in getattr(delta, updated_field):
                key = getattr(obj, key_field).SerializeToString(deterministic=True)
                last.pop(key, None)  # re-inserted last: the merged delta keeps change order
                last[key] = (True, obj)
            for removed in getattr(delta, removed_field):
                key = removed.SerializeToString(deterministic=True)
                last.pop(key, None)
                last[key] = (False, removed)
        if not last:
            continue
        getattr(merged, updated_field).extend(o for kept, o in last.values() if kept)
        getattr(merged, removed_field).extend(o for kept, o in last.values() if not kept)
    return pb.Update(revision=updates[-1].revision, delta=merged)


def _parts(
    revision: int, kinds: tuple[tuple[str, list[Any]], ...], *, last: bool = True
) -> list[pb.Update]:
    """Snapshot parts of at most SNAPSHOT_PART items each; `last` marks the final one."""
    parts = [pb.Update(revision=revision, snapshot=pb.Snapshot())]
    held = 0
    for kind, items in kinds:
        for item in items:
            if held == SNAPSHOT_PART:
                parts.append(pb.Update(revision=revision, snapshot=pb.Snapshot()))
                held = 0
            getattr(parts[-1].snapshot, kind).append(item)
            held += 1
    parts[-1].snapshot.last = last
    return parts


class ByIdentity(Generic[V]):
    """A small LRU of values made from some objects, found by those objects' identity (not
    equality: comparing protobuf messages costs what remaking the value would). It holds the
    objects themselves, so an id it keys on is never reused by another object while kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[int, ...], tuple[tuple[object, ...], V]] = OrderedDict()

    def get(self, objects: tuple[object, ...]) -> V | None:
        ids = tuple(map(id, objects))
        held = self._kept.get(ids)
        if held is None or not all(a is b for a, b in zip(held[0], objects, strict=True)):
            return None
        self._kept.move_to_end(ids)
        return held[1]

    def put(self, objects: tuple[object, ...], value: V) -> None:
        self._kept[tuple(map(id, objects))] = (objects, value)
        if len(self._kept) > self.size:
            self._kept.popitem(last=False)


class SharedEncoding:
    """The stream's serializer: each Update once, however many streams send it. The hub hands
    one Update object to every agent a delta is the same for (and one per snapshot part shared
    by all), so 500 streams cost one encoding instead of 500. (The public API's Stat uses it
    too: a kept answer is encoded once, however often it is asked for.)"""

    def __init__(self, size: int = 64) -> None:
        self._recent: ByIdentity[bytes] = ByIdentity(size)
        self.encoded = self.reused = 0

    def __call__(self, update: Message) -> bytes:
        raw = self._recent.get((update,))
        if raw is not None:
            self.reused += 1
            return raw
        raw = update.SerializeToString()
        self.encoded += 1
        self._recent.put((update,), raw)
        return raw


def add_to_server(service: DestinationService, server: grpc.aio.Server) -> SharedEncoding:
    """Register `service` as pb_grpc.add_DestinationServicer_to_server does, with the shared
    encoding."""
    encoding = SharedEncoding()
    handler = grpc.unary_stream_rpc_method_handler(
        service.Subscribe,
        request_deserializer=pb.SubscribeRequest.FromString,
        response_serializer=encoding,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Subscribe": handler}),)
    )
    return encoding


class DestinationService(pb_grpc.DestinationServicer):
    """`wait_for_index`: hold each new stream until the index has listed every kind once. A
    control plane that just started must not hand out a half-listed table: the agent would
    replace its good one with it, take the meshed pods missing from it for unmeshed ones and
    reach them in plaintext until the rest arrived."""

    def __init__(
        self,
        hub: DestinationHub,
        *,
        wait_for_index: bool = False,
    ):
        self.hub = hub
        self.wait_for_index = wait_for_index

    async def Subscribe(  # noqa: N802 (gRPC method name)
        self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Update]:
        if not request.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node must be set")
        await check_agent(context, request.node)
        while self.wait_for_index and not self.hub.index.synced:
            await asyncio.sleep(INDEX_POLL)  # only in a control plane's first moments
        sub, snapshot = self.hub.subscribe(request.node, request.agent_version)
        sub.task = asyncio.current_task()
        try:
            # Let go of each part once sent: this generator lives as long as the stream.
            snapshot.reverse()
            while snapshot:
                DESTINATION_UPDATES.labels("snapshot").inc()
                yield snapshot.pop()
            while True:
                item = self.hub.take(await sub.queue.get(), sub)
                if item is _OVERFLOWED:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "agent fell behind the destination stream; reconnect for a new snapshot",
                    )
                assert isinstance(item, pb.Update)
                DESTINATION_UPDATES.labels("delta").inc()
                yield item
        finally:
            self.hub.unsubscribe(sub)
