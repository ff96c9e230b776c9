"""Tap broker: sends taps to the agents that may see matching pods' requests (every agent,
since a meshed client's agent observes the inbound side too; only the pods' own agents for a
tap `to` something) and routes their events back."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc

from controlplane import resources
from controlplane.agent_auth import check_agent
from controlplane.index import Change, ClusterIndex, PodRemoved, PodUpdated
from controlplane.metrics import TAP_EVENTS, TAP_SUBSCRIPTIONS
from nodemesh import tasks
from nodemesh.api import tap_pb2 as pb
from nodemesh.api import tap_pb2_grpc as pb_grpc
from nodemesh.model import PodKey
from nodemesh.ratelimit import TokenBucket

log = logging.getLogger(__name__)
_ids = itertools.count(1)

# What tapping may cost, whoever asks: at most MAX_STREAMS concurrent streams, and together at
# most TAP_BUDGET_RPS tapped requests a second across the cluster (shared evenly between the
# streams when they ask for more), so the agents' extra work stays bounded.
MAX_STREAMS = 16
TAP_BUDGET_RPS = 250.0
# ... and one caller (one authenticated user or ServiceAccount) at most this many of them, so
# no one caller can take every stream.
MAX_STREAMS_PER_CALLER = 4


class TapBusy(Exception):
    """Too many concurrent tap streams; the message is meant for the user."""


@dataclass(eq=False)
class TapStream:
    """One subscriber's tap: what it asked for, where it went, and its event queue."""

    id: str
    request: pb.TapSubscription  # resource, to, method, path_prefix, max_rps (pods filled per node)
    queue: asyncio.Queue[pb.TapEvent]
    bucket: TokenBucket
    asked_rps: float = 0.0
    caller: str = ""  # who opened it, as authenticated ("" when callers are not told apart)
    sent: dict[str, pb.TapSubscription] = field(default_factory=dict)  # node -> last start
    admitted: OrderedDict[tuple[str, int], None] = field(default_factory=OrderedDict)
    dropped: int = 0


@dataclass(eq=False)
class AgentLink:
    node: str
    version: str
    commands: asyncio.Queue[pb.TapCommand]


class TapBroker:
    def __init__(
        self,
        index: ClusterIndex,
        *,
        queue_size: int = 1000,
        max_streams: int = MAX_STREAMS,
        max_streams_per_caller: int = MAX_STREAMS_PER_CALLER,
        budget_rps: float = TAP_BUDGET_RPS,
    ) -> None:
        if max_streams_per_caller < 1:
            raise ValueError(
                f"tap streams per caller must be at least 1, not {max_streams_per_caller}"
            )
        self.index = index
        self.queue_size = queue_size
        self.max_streams = max_streams
        self.max_streams_per_caller = max_streams_per_caller
        self.budget_rps = budget_rps
        self.agents: dict[str, AgentLink] = {}
        self.streams: dict[str, TapStream] = {}

    # -- subscribers ---------------------------------------------------------------------

    def subscribe(self, request: pb.TapSubscription, *, caller: str = "") -> TapStream:
        """Validate (BadResource for unknown kinds) and start the tap on the agents concerned;
        TapBusy when the control plane or `caller` has as many streams open as allowed."""
        resources.canonical_kind(request.resource.kind)
        if request.HasField("to"):
            resources.canonical_kind(request.to.kind)
        if not 0 < request.max_rps < math.inf:  # also refuses NaN
            raise resources.BadResource(f"max_rps must be above 0, not {request.max_rps}")
        mine = sum(s.caller == caller for s in self.streams.values())
        if caller and mine >= self.max_streams_per_caller:
            raise TapBusy(
                f"{caller} has {mine} tap streams open, the most one caller may have at once "
                f"({self.max_streams_per_caller}, nodemesh-controlplane "
                "--tap-streams-per-caller); end one of them and try again"
            )
        if len(self.streams) >= self.max_streams:
            raise TapBusy(
                f"{len(self.streams)} tap streams are open, the most the control plane allows "
                f"at once ({self.max_streams}); try again when one ends"
            )
        stream = TapStream(
            id=f"tap-{next(_ids)}",
            request=request,
            queue=asyncio.Queue(self.queue_size),
            bucket=TokenBucket(request.max_rps),
            asked_rps=request.max_rps,
            caller=caller,
        )
        self.streams[stream.id] = stream
        TAP_SUBSCRIPTIONS.set(len(self.streams))
        self._share_budget()
        return stream

    def _share_budget(self) -> None:
        """Give each stream min(what it asked, an even share of what the others leave), then
        (re)start it on its agents where its rate changed."""
        left, waiting = self.budget_rps, sorted(self.streams.values(), key=lambda s: s.asked_rps)
        while waiting:
            stream = waiting.pop(0)
            rate = min(stream.asked_rps, left / (len(waiting) + 1))
            left -= rate
            if rate != stream.request.max_rps:
                stream.request.max_rps = rate
                stream.bucket = TokenBucket(rate)
            self._route(stream)

    def unsubscribe(self, stream: TapStream) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        TAP_SUBSCRIPTIONS.set(len(self.streams))
        for node in stream.sent:
            self._send(node, pb.TapCommand(stop=stream.id))
        self._share_budget()

    def _route(self, stream: TapStream) -> None:
        """(Re)compute which agents tap which pods for `stream`; send only what changed."""
        req = stream.request
        pods = resources.pods_of(
            self.index, req.resource.kind, namespace=req.resource.namespace, name=req.resource.name
        )
        to_addresses: list[str] = []
        if req.HasField("to"):
            to = req.to
            to_addresses = resources.addresses_of(
                self.index, to.kind, namespace=to.namespace, name=to.name
            )
        by_node: dict[str, list[pb.PodRef]] = {}
        for p in sorted(pods, key=lambda p: p.key):
            if p.node:
                by_node.setdefault(p.node, []).append(
                    pb.PodRef(namespace=p.key.namespace, name=p.key.name)
                )
        share = req.max_rps / max(1, len(by_node))
        if by_node and not to_addresses:
            # Observe once: a meshed client's agent reports the requests it relays for the
            # destination pod's agent too, so inbound requests to these pods are seen on
            # whichever node their clients are. Every agent gets every pod (its own pods'
            # outbound requests, and any agent's inbound ones to them). A tap with `to` takes
            # outbound requests only: just the pods' own agents.
            everything = [ref for refs in by_node.values() for ref in refs]
            by_node = {node: everything for node in self.agents}
        for node in [n for n in stream.sent if n not in by_node]:
            del stream.sent[node]
            self._send(node, pb.TapCommand(stop=stream.id))
        for node, refs in by_node.items():
            if node not in self.agents:
                continue
            start = pb.TapSubscription()
            start.CopyFrom(req)
            start.id = stream.id
            start.ClearField("pods")
            start.pods.extend(refs)
            start.ClearField("to_addresses")
            start.to_addresses.extend(to_addresses)
            start.max_rps = share
            if stream.sent.get(node) != start:
                stream.sent[node] = start
                self._send(node, pb.TapCommand(start=start))

    def on_index_changes(self, changes: list[Change], revision: int) -> None:
        """Feed listener: pods come and go, so taps follow them."""
        if self.streams and any(isinstance(c, PodUpdated | PodRemoved) for c in changes):
            for stream in list(self.streams.values()):
                self._route(stream)

    # -- agents --------------------------------------------------------------------------

    def agent_connected(self, node: str, version: str) -> AgentLink:
        link = AgentLink(node, version, asyncio.Queue(self.queue_size))
        old = self.agents.get(node)
        self.agents[node] = link
        if old is not None:
            log.info("tap: agent of %s reconnected; the old stream is replaced", node)
        for stream in self.streams.values():
            stream.sent.pop(node, None)
            self._route(stream)
        return link

    def agent_disconnected(self, link: AgentLink) -> None:
        if self.agents.get(link.node) is link:
            del self.agents[link.node]
            for stream in self.streams.values():
                stream.sent.pop(link.node, None)

    def agent_event(self, node: str, event: pb.TapEvent) -> None:
        stream = self.streams.get(event.subscription_id)
        if stream is None or node not in stream.sent:
            TAP_EVENTS.labels("unsolicited").inc()
            return
        key = (node, event.request_id)
        if event.WhichOneof("kind") == "req":
            if not stream.bucket.admit():
                TAP_EVENTS.labels("rate_limited").inc()
                return
            stream.admitted[key] = None
            if len(stream.admitted) > 10_000:
                stream.admitted.popitem(last=False)
        elif key not in stream.admitted:
            TAP_EVENTS.labels("rate_limited").inc()
            return
        elif event.WhichOneof("kind") == "end":
            stream.admitted.pop(key, None)
        self._name_workloads(event)
        try:
            stream.queue.put_nowait(event)
            TAP_EVENTS.labels("delivered").inc()
        except asyncio.QueueFull:
            stream.dropped += 1
            TAP_EVENTS.labels("subscriber_full").inc()

    def _name_workloads(self, event: pb.TapEvent) -> None:
        """Fill in a peer's workload where the agent could not name it: an agent knows the pod
        a tunnelled client came from, but not the workload of a pod behind no Service."""
        for peer in (event.src, event.dst):
            if peer.workload:
                continue
            if peer.pod:
                info = self.index.pods.get(PodKey(peer.namespace, peer.pod))
            else:
                info = self.index.pod_by_ip(peer.ip) if peer.ip else None
            if info is None:
                continue
            peer.namespace, peer.pod = info.key.namespace, info.key.name
            peer.workload_kind = info.workload.kind.lower()  # the agents' spelling
            peer.workload = info.workload.name

    def _send(self, node: str, command: pb.TapCommand) -> None:
        link = self.agents.get(node)
        if link is None:
            return
        try:
            link.commands.put_nowait(command)
        except asyncio.QueueFull:
            log.warning("tap: agent of %s is not reading its commands; dropping one", node)


class AgentTapService(pb_grpc.AgentTapServicer):
    def __init__(self, broker: TapBroker) -> None:
        self.broker = broker

    async def Connect(  # noqa: N802
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello" or not first.hello.node:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello with the node"
            )
        node = first.hello.node
        await check_agent(context, node)
        link = self.broker.agent_connected(node, first.hello.agent_version)
        reader = tasks.spawn(self._read(context, node), name=f"tap-read-{node}")
        try:
            while True:
                command = asyncio.ensure_future(link.commands.get())
                done, _ = await asyncio.wait({command, reader}, return_when=asyncio.FIRST_COMPLETED)
                if command not in done:
                    command.cancel()
                    return  # the agent closed its side
                await context.write(command.result())
        finally:
            reader.cancel()
            self.broker.agent_disconnected(link)

    async def _read(self, context: grpc.aio.ServicerContext, node: str) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            if msg.WhichOneof("kind") == "event":
                self.broker.agent_event(node, msg.event)
