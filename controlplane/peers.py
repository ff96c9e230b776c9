"""Replicas that agree: every control-plane replica holds the whole cluster's telemetry, and a
tap through any replica reaches every agent.

How (and why this way): each agent keeps one connection, to whichever replica the Service gave
it. A replica forwards every report it accepts from its own agents, as received, to every other
replica; a report forwarded by a peer is ingested and not forwarded again. So each replica's
store is the whole cluster's, Stat/Edges/Top answer from local memory as with one replica, and
killing a replica loses nothing the others have not already got (its agents reconnect to a
survivor within their backoff). The price is ingest: each replica parses every report, i.e. N
times one report's parse for N replicas, which bench/controlplane_scale.py measures at the
scale target (see bench/results); the alternatives cost more where it hurts: replicas querying
each other at Stat time make every query N round trips and lose the dead replica's window;
agents reporting to every replica multiply agent connections and need an agent change.
Tap cannot be replicated (the agents tapped are connected to one replica each), so a tap is fanned
out at request time: the replica the CLI reached re-asks each peer's public API with the
caller's own credentials (each peer authorizes the caller itself) and a `local only` mark, and
merges their events. Nothing runs once, so no leader election (no Lease).

Peers are the control plane's own pods in the index (label app.kubernetes.io/name =
nodemesh-controlplane in the install namespace, Running, with an IP), except this one
($POD_NAME). Between replicas, reports are authenticated with a token derived from the CA's
issuer key, which every replica holds and agents never do.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.index import Change, ClusterIndex, PodRemoved, PodUpdated
from nodemesh import tasks
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.api import tap_pb2
from nodemesh.api import telemetry_pb2 as tpb

log = logging.getLogger(__name__)

PEER_LABEL = ("app.kubernetes.io/name", "nodemesh-controlplane")
PEER_TOKEN_PREFIX = "peer."
# Metadata a replica adds when it re-asks a peer: answer from your own agents only.
LOCAL_ONLY = "nodemesh-local-only"
TELEMETRY_METHOD = "/nodemesh.telemetry.v1.Telemetry/Report"
FORWARD_QUEUE = 2000  # reports held per peer while it is unreachable (~4 s of 500 agents)
RETRY_SECONDS = 1.0


def peer_token(issuer_key: ec.EllipticCurvePrivateKey) -> str:
    """What replicas show each other: an HMAC only holders of the issuer key can compute."""
    secret = issuer_key.private_numbers().private_value.to_bytes(32, "big")
    mac = hmac.new(secret, b"nodemesh control-plane peer v1", hashlib.sha256).hexdigest()
    return PEER_TOKEN_PREFIX + mac


def is_peer_token(token: str, expected: str | None) -> bool:
    return (
        expected is not None
        and token.startswith(PEER_TOKEN_PREFIX)
        and hmac.compare_digest(token.encode(), expected.encode())
    )


@dataclass(frozen=True, order=True)
class Peer:
    name: str
    ip: str


def find_peers(index: ClusterIndex, *, namespace: str, me: str) -> list[Peer]:
    key, value = PEER_LABEL
    out = []
    for pod in index.pods_in_namespace(namespace):
        if pod.key.name == me or pod.labels.get(key) != value:
            continue
        if pod.phase != "Running" or pod.terminating or not pod.ip:
            continue
        out.append(Peer(pod.key.name, pod.ip))
    return sorted(out)


@dataclass
class PeersLeft:
    """An index listener that calls `then()` when a peer replica goes (killed, evicted, moved to
    another IP): its callers now reach this replica, whose kept Stat answers were never asked
    (the control plane builds the common ones ahead then, as after its own start)."""

    peers: Callable[[], Iterable[Peer]]
    then: Callable[[], None]
    known: frozenset[Peer] = frozenset()

    def __call__(self, _changes: object, _revision: int) -> None:
        now = frozenset(self.peers())
        if self.known - now:
            self.then()
        self.known = now


@dataclass(eq=False)
class _Link:
    peer: Peer
    queue: asyncio.Queue[bytes]
    task: asyncio.Task[None] | None = None
    dropped: int = 0
    sent: int = 0


@dataclass
class ReportForwarder:
    """Sends each report this replica accepted from its own agents to every peer (best effort:
    a peer that cannot keep up or is away loses the oldest reports held for it, counted)."""

    peers: Callable[[], Iterable[Peer]]
    port: int
    token: str
    credentials: grpc.ChannelCredentials | None  # None: the peers' agent API is plaintext
    server_name: str = "nodemesh-controlplane.nodemesh.svc"
    namespace: str = "nodemesh"  # where the peers are: pod changes there may change them
    queue_size: int = FORWARD_QUEUE
    links: dict[Peer, _Link] = field(default_factory=dict)

    def forward(self, raw: bytes) -> None:
        for link in self.links.values():
            if link.queue.full():
                link.queue.get_nowait()
                link.dropped += 1
            link.queue.put_nowait(raw)

    async def run(self, every: float = 1.0) -> None:
        try:
            while True:
                self.reconcile()
                await asyncio.sleep(every)
        finally:
            await tasks.cancel_all([link.task for link in self.links.values() if link.task])

    def on_index_changes(self, changes: Iterable[Change]) -> None:
        if any(isinstance(c, PodUpdated | PodRemoved) and self._ours(c) for c in changes):
            self.reconcile()

    def _ours(self, change: PodUpdated | PodRemoved) -> bool:
        key = change.pod.key if isinstance(change, PodUpdated) else change.key
        return key.namespace == self.namespace

    def reconcile(self) -> None:
        want = set(self.peers())
        for peer in [p for p in self.links if p not in want]:
            link = self.links.pop(peer)
            if link.task is not None:
                link.task.cancel()
            log.info("peer %s (%s) gone", peer.name, peer.ip)
        for peer in want - self.links.keys():
            link = _Link(peer, asyncio.Queue(self.queue_size))
            link.task = tasks.spawn(self._send(link), name=f"forward to {peer.name}")
            self.links[peer] = link
            log.info("forwarding telemetry to peer %s (%s)", peer.name, peer.ip)

    def _channel(self, peer: Peer) -> grpc.aio.Channel:
        target = f"{peer.ip}:{self.port}"
        if self.credentials is None:
            return grpc.aio.insecure_channel(target)
        return grpc.aio.secure_channel(
            target, self.credentials, options=[("grpc.ssl_target_name_override", self.server_name)]
        )

    async def _send(self, link: _Link) -> None:
        pending: bytes | None = None  # taken from the queue, not yet written: kept on failure
        while True:
            try:
                async with self._channel(link.peer) as channel:
                    call = channel.stream_stream(
                        TELEMETRY_METHOD,
                        request_serializer=lambda b: b,
                        response_deserializer=tpb.ReportAck.FromString,
                    )(metadata=(("authorization", f"Bearer {self.token}"),))
                    # The acks are read all along: their end is how a broken call shows.
                    reader = tasks.spawn(self._acks(link, call), name=f"acks of {link.peer.name}")
                    try:
                        while not reader.done():
                            if pending is None:
                                getter = tasks.spawn(link.queue.get(), name="next report")
                                await asyncio.wait(
                                    {getter, reader}, return_when=asyncio.FIRST_COMPLETED
                                )
                                if not getter.done():
                                    await tasks.cancel_all([getter])
                                    break
                                pending = getter.result()
                            await call.write(pending)
                            pending = None
                            link.sent += 1
                    finally:
                        await tasks.cancel_all([reader])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the peer restarting, unreachable, refusing
                log.warning("telemetry to peer %s: %s; retrying", link.peer.name, exc)
            await asyncio.sleep(RETRY_SECONDS)

    @staticmethod
    async def _acks(link: _Link, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for ack in call:
                if not ack.accepted:
                    log.warning("peer %s refused a report: %s", link.peer.name, ack.reason)
        except grpc.aio.AioRpcError as exc:
            log.info("telemetry to peer %s ended: %s", link.peer.name, exc.code().name)


def is_local_only(context: grpc.aio.ServicerContext) -> bool:
    return any(k == LOCAL_ONLY for k, _ in context.invocation_metadata() or ())


def caller_credentials(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
    return [
        (k, v if isinstance(v, str) else v.decode())
        for k, v in context.invocation_metadata() or ()
        if k == "authorization"
    ]


async def peer_tap(
    peers: Callable[[], Iterable[Peer]],
    port: int,
    request: ppb.TapRequest,
    credentials: list[tuple[str, str]],
    out: asyncio.Queue[tap_pb2.TapEvent],
    every: float = 1.0,
) -> None:
    """Re-ask every peer's public API for the same tap (their own agents only) and put their
    events on `out`, following the peers as they come and go (a replica that restarts is tapped
    again); a peer that fails is retried."""

    async def one(peer: Peer) -> None:
        while True:
            try:
                async with grpc.aio.insecure_channel(f"{peer.ip}:{port}") as channel:
                    stub = ppb_grpc.PublicStub(channel)
                    call = stub.Tap(request, metadata=[*credentials, (LOCAL_ONLY, "1")])
                    async for event in call:
                        try:
                            out.put_nowait(event)
                        except asyncio.QueueFull:
                            pass  # the subscriber is behind: dropped, as local events are
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.info("tap through peer %s: %s; retrying", peer.name, exc.code().name)
            await asyncio.sleep(RETRY_SECONDS)

    running: dict[Peer, asyncio.Task[None]] = {}
    try:
        while True:
            want = set(peers())
            for peer in [p for p in running if p not in want]:
                running.pop(peer).cancel()
            for peer in want - running.keys():
                running[peer] = tasks.spawn(one(peer), name=f"tap via {peer.name}")
            await asyncio.sleep(every)
    finally:
        await tasks.cancel_all(list(running.values()))
