"""The agent's telemetry and tap clients against the real control plane services over gRPC with
TLS and the lab's bootstrap tokens on loopback: reports reach the store and its stat queries
(exactly, across a control plane restart), a public Tap reaches the agent and its events flow
back to the subscriber, and nothing is emitted once the tap ends."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from controlplane.access import Gate, LabAccessReview
from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.destination import DestinationHub
from controlplane.identity import BootstrapTokenAuthenticator, CertificateAuthority
from controlplane.identity.serving import ServingCertificate
from controlplane.index import ClusterIndex
from controlplane.public_api import PublicService
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.tap import AgentTapService, TapBroker
from controlplane.telemetry import Resource, TelemetryStore, nodes, stat
from controlplane.telemetry.service import MAX_RECEIVE_BYTES, TelemetryService
from controlplane.telemetry_port import StoreTelemetry
from nodeagent.observe.events import Peer, RequestObserved, RequestStarted
from nodeagent.observe.sink import AgentSink
from nodeagent.upstream.channel import Channel, open_channel
from nodeagent.upstream.destination import read_token
from nodeagent.upstream.tap import TapClient
from nodeagent.upstream.telemetry import TelemetryClient
from nodemesh import tasks
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.api import tap_pb2 as tpb
from nodemesh.api import tap_pb2_grpc as tpb_grpc
from nodemesh.histogram import RELATIVE_ERROR, nearest_rank
from nodemesh.identity import create_issuer_files
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "controlplane"))
import cp_objects as k  # noqa: E402

pytestmark = pytest.mark.timeout(90)

WEB = Peer("10.244.1.10", "emojivoto", "web-5d8f7-0", "Deployment", "web", "",
           "spiffe://cluster.local/ns/emojivoto/sa/web")  # fmt: skip
EMOJI = Peer("10.244.2.20", "emojivoto", "emoji-1", "Deployment", "emoji", "emoji-svc",
             "spiffe://cluster.local/ns/emojivoto/sa/emoji")  # fmt: skip


@dataclass
class ControlPlane:
    """The agent API services as controlplane.main wires them, on a TLS port of 127.0.0.1."""

    tmp: Path
    store: TelemetryStore
    broker: TapBroker
    index: ClusterIndex
    server: grpc.aio.Server | None = None
    port: int = 0

    @property
    def ca(self) -> Path:
        return self.tmp / "ca.crt"

    @property
    def access(self) -> Path:
        return self.tmp / "access"

    def admin(self) -> list[tuple[str, str]]:
        token = (self.access / ADMIN_TOKEN_FILE).read_text().strip()
        return [("authorization", f"Bearer {token}")]

    @property
    def tokens(self) -> Path:
        return self.tmp / "tokens.json"

    async def start(self, port: int = 0) -> None:
        files_issuer = self._issuer
        authenticator = BootstrapTokenAuthenticator.from_file(self.tokens)
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)],
            # The public API shares this test server; it authenticates its callers itself.
            interceptors=[AgentAuthInterceptor(authenticator, skip={"nodemesh.public.v1.Public"})],
        )
        TelemetryService(
            store=self.store,
            is_known_node={"node1", "node2"}.__contains__,
            registry=CollectorRegistry(),
        ).add_to(server)
        tpb_grpc.add_AgentTapServicer_to_server(AgentTapService(self.broker), server)
        ppb_grpc.add_PublicServicer_to_server(
            PublicService(
                index=self.index,
                telemetry=StoreTelemetry(self.store),
                broker=self.broker,
                hub=DestinationHub(self.index),
                source_name="local",
                gate=Gate(LabAccessReview(self.access / ACCESS_FILE)),
            ),
            server,
        )
        authority = CertificateAuthority(
            anchors=[self._anchor],  # type: ignore[attr-defined]
            issuer=files_issuer,
            trust_domain="cluster.local",
            pods_on_node=lambda node: [],
        )
        creds = ServingCertificate(authority).credentials()
        self.port = server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)
            self.server = None


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    files = create_issuer_files(tmp_path, nodes=["node1", "node2"])
    create_lab_access(tmp_path / "access")
    index = ClusterIndex()
    for obj in k.web_app(replicas=2, nodes=2):
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    plane = ControlPlane(tmp_path, TelemetryStore(), TapBroker(index), index)
    plane._issuer = files.issuer  # type: ignore[attr-defined]
    plane._anchor = files.anchor.certificate  # type: ignore[attr-defined]
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop()


def agent_channel(cp: ControlPlane, token: Callable[[], str | None] | None = None) -> Channel:
    """The agent's channel, with node1's token (read per call) unless `token` says otherwise."""
    return open_channel(
        f"127.0.0.1:{cp.port}",
        insecure=False,
        ca_file=cp.ca,
        token=token or (lambda: read_token(cp.tokens, node="node1")),
    )


def request(
    i: int, *, latency_us: int, status: int, direction: str = "outbound"
) -> RequestObserved:
    return RequestObserved(
        req_id=i, conn_id=1, direction=direction, src=WEB, dst=EMOJI, protocol="http1", tls=True,
        method="GET", authority="emoji-svc:8080", path="/api/list", status=status,
        grpc_status=None, classification="failure" if status >= 500 else "success", reset=False,
        latency_first_byte_s=latency_us / 1e6, latency_s=latency_us / 1e6, request_bytes=1,
        response_bytes=2, started_at=1.7e9,
    )  # fmt: skip


async def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def web_to_emoji(store: TelemetryStore):  # type: ignore[no-untyped-def]
    rows = stat(
        store,
        Resource("deploy", "emojivoto", "web"),
        to=Resource("deploy", "emojivoto", "emoji"),
        window_s=60,
        include_current=True,
    )
    return rows[0] if rows else None


async def test_reports_reach_the_store_exactly_across_a_control_plane_restart(cp) -> None:
    sink = AgentSink(node="node1")
    channel = agent_channel(cp)
    client = TelemetryClient(
        channel=channel,
        aggregate=sink.aggregate,
        node="node1",
        pods_enrolled=lambda: 7,
        interval=0.1,
    )
    task = tasks.spawn(client.run(), name="test telemetry client")
    latencies: list[int] = []
    failures = 0
    try:

        def feed(start: int, n: int) -> None:
            nonlocal failures
            for i in range(start, start + n):
                latency = 500 + (i * 7919) % 20_000
                status = 500 if i % 10 == 0 else 200
                failures += status == 500
                latencies.append(latency)
                sink.request(request(i, latency_us=latency, status=status))
                # The destination pod's agent (node2 in a real cluster) records it inbound.
                sink.request(request(i, latency_us=latency, status=status, direction="inbound"))

        feed(0, 300)
        await wait_for(lambda: (r := web_to_emoji(cp.store)) is not None and r.requests == 300)
        # The store counts a report before its ack is back at the client: wait for that too.
        await wait_for(lambda: client.connected)
        feed(300, 200)  # deltas add up, nothing counted twice
        await wait_for(lambda: web_to_emoji(cp.store).requests == 500)

        # The control plane goes away; the agent keeps counting and reports it all later.
        port = cp.port
        await cp.stop()
        await wait_for(lambda: not client.connected)
        feed(500, 250)
        await asyncio.sleep(0.5)
        await cp.start(port)
        await wait_for(lambda: web_to_emoji(cp.store).requests == 750, timeout=30)

        row = web_to_emoji(cp.store)
        assert (row.success, row.failure) == (750 - failures, failures)
        ordered = sorted(latencies)
        for q in (0.5, 0.95, 0.99):
            exact = ordered[nearest_rank(q, len(ordered)) - 1] / 1000
            assert abs(row.latency_ms(q) - exact) <= exact * RELATIVE_ERROR, q
        # Without --to: what emoji served (the inbound series), the same numbers.
        (served,) = stat(
            cp.store, Resource("deploy", "emojivoto", "emoji"), window_s=60, include_current=True
        )
        assert served.requests == 750 and served.failure == failures
        (agent,) = nodes(cp.store)
        assert agent.node == "node1" and agent.pods_enrolled == 7
        assert agent.cpu_seconds > 0 and agent.rss_bytes > 10 << 20 and agent.version
    finally:
        await tasks.cancel_all([task])
        channel.close()


async def test_a_wrong_token_is_refused_and_nothing_is_lost(cp, tmp_path: Path) -> None:
    sink = AgentSink(node="node1")
    token = {"value": "not-the-token"}
    channel = agent_channel(cp, lambda: token["value"])
    client = TelemetryClient(
        channel=channel,
        aggregate=sink.aggregate,
        node="node1",
        pods_enrolled=lambda: 0,
        interval=0.1,
    )
    task = tasks.spawn(client.run(), name="test telemetry client")
    try:
        for i in range(40):
            sink.request(request(i, latency_us=1000, status=200))
        await asyncio.sleep(1.0)
        assert not client.connected and web_to_emoji(cp.store) is None
        token["value"] = read_token(cp.tokens, node="node1")  # the token file was rotated in
        await wait_for(lambda: (r := web_to_emoji(cp.store)) is not None and r.requests == 40)
    finally:
        await tasks.cancel_all([task])
        channel.close()


class Reader:
    """Reads a stream in a task (cancelling a pending read() would cancel the RPC)."""

    def __init__(self, call) -> None:  # type: ignore[no-untyped-def]
        self.call = call
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = tasks.spawn(self._pump(), name="test tap reader")

    async def _pump(self) -> None:
        async for msg in self.call:
            self.queue.put_nowait(msg)

    async def get(self, timeout: float = 5.0) -> tpb.TapEvent:
        return await asyncio.wait_for(self.queue.get(), timeout)


def one_request(sink: AgentSink, rid: int, src: Peer = WEB, path: str = "/api/list") -> bool:
    """What the data plane does per request; True if it was tapped."""
    tapped = sink.tapping(src, EMOJI)
    if tapped:
        sink.request_started(RequestStarted(rid, 1, "outbound", src, EMOJI, "http1", True, "GET",
                                            "emoji-svc", path, 1.7e9))  # fmt: skip
        sink.response_started(rid, 200, 1.7e9 + 0.002)
    ev = request(rid, latency_us=3000, status=200)
    sink.request(RequestObserved(**{**{f: getattr(ev, f) for f in ev.__slots__}, "src": src,
                                    "path": path}))  # fmt: skip
    return tapped


async def test_a_public_tap_reaches_the_agent_and_its_events_flow_back(cp) -> None:
    sink = AgentSink(node="node1")
    channel = agent_channel(cp)
    client = TapClient(channel=channel, taps=sink.taps)
    task = tasks.spawn(client.run(), name="test tap client")
    public_channel = grpc.aio.secure_channel(
        f"127.0.0.1:{cp.port}", grpc.ssl_channel_credentials(cp.ca.read_bytes())
    )
    tap = None
    try:
        await wait_for(lambda: "node1" in cp.broker.agents)
        # Nobody taps: nothing is tapped, nothing is sent.
        assert not one_request(sink, 1)
        assert client.sent == 0

        tap = Reader(
            ppb_grpc.PublicStub(public_channel).Tap(
                ppb.TapRequest(
                    resource=ppb.Resource(kind="deploy", namespace="emojivoto", name="web"),
                    path_prefix="/api",
                    max_rps=50,
                ),
                metadata=cp.admin(),
            )
        )
        await wait_for(lambda: bool(sink.taps.subscriptions))
        (sub,) = sink.taps.subscriptions.values()
        # Every pod of web, also the one on another node: this agent may report its inbound
        # requests (observe once: the client's agent does).
        assert sub.pods == {("emojivoto", "web-5d8f7-0"), ("emojivoto", "web-5d8f7-1")}

        assert one_request(sink, 10)
        one_request(sink, 11, path="/other")  # a tapped pair, but the path filter leaves it out
        other = Peer("10.244.1.99", "emojivoto", "vote-bot-0", "Deployment", "vote-bot")
        assert not one_request(sink, 12, src=other)
        got = [await tap.get() for _ in range(3)]
        assert [e.WhichOneof("kind") for e in got] == ["req", "rsp", "end"]
        assert {e.request_id for e in got} == {10}
        req, rsp, end = got
        assert req.node == "node1" and req.src.pod == "web-5d8f7-0" and req.dst.pod == "emoji-1"
        assert req.req.path == "/api/list" and rsp.rsp.status == 200
        assert rsp.rsp.since_request_us == 2000 and end.end.since_request_us == 3000
        assert end.end.response_bytes == 2 and req.tls
        await asyncio.sleep(0.3)
        assert tap.queue.empty()

        # The subscriber leaves: the agent is told to stop and taps nothing more.
        tap.call.cancel()
        await wait_for(lambda: not sink.taps.subscriptions)
        sent = client.sent
        assert not one_request(sink, 20)
        assert client.sent == sent

        # The control plane restarts: the agent says hello again on its own.
        port = cp.port
        await cp.stop()
        await wait_for(lambda: "node1" not in cp.broker.agents and not client.connected)
        await cp.start(port)
        await wait_for(lambda: "node1" in cp.broker.agents and client.connected)
    finally:
        if tap is not None:
            tap.call.cancel()
            await tasks.cancel_all([tap.task])
        await tasks.cancel_all([task])
        await public_channel.close()
        channel.close()
