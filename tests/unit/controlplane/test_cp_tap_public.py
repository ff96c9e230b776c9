"""Tap broker fan-out and rate limit, and the public API, over real gRPC on loopback."""

from __future__ import annotations

import asyncio

import cp_objects as k
import grpc
import pytest
from bearer import bearer

from controlplane.access import Gate, LabAccessReview
from controlplane.destination import DestinationHub
from controlplane.index import ClusterIndex
from controlplane.public_api import PublicService
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.tap import AgentTapService, TapBroker
from controlplane.telemetry_port import AgentState, NoTelemetry, Selector, StatRow
from nodemesh import tasks
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.api import tap_pb2 as tpb
from nodemesh.api import tap_pb2_grpc as tpb_grpc
from nodemesh.histogram import bucket_index
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access


class RecordedTelemetry(NoTelemetry):
    """Answers with fixed figures and records the queries, to check the API's joins."""

    def __init__(self) -> None:
        self.queries: list[dict] = []
        # Pods that agents reporting right now say they enrolled: (namespace, name, uid).
        self.enrolled = {("emojivoto", "web-5d8f7-0", ""), ("emojivoto", "web-5d8f7-1", "")}

    def stat(self, **query: object) -> list[StatRow]:
        self.queries.append(query)
        if query["group_by"] != "deployment":
            return []
        # 600 responses: p50 1.5 ms, p95 4 ms, p99 9 ms (within the histogram's 1/128).
        latency = {bucket_index(1500): 500, bucket_index(4000): 70, bucket_index(9000): 30}
        return [
            StatRow(
                "deployment",
                "emojivoto",
                "web",
                window_s=60,
                success=540,
                failure=60,
                latency=latency,
                tcp_open_connections=3,
            )
        ]

    def agents(self) -> list[AgentState]:
        return [AgentState("node2", "0.1.0", 1_700_000_000_000, 1, 7, 1.25, 40_000_000)]

    def enrolled_pods(self) -> set[tuple[str, str, str]]:
        return self.enrolled


@pytest.fixture
def index() -> ClusterIndex:
    idx = ClusterIndex()
    for obj in k.web_app(replicas=2) + [k.node(3)]:
        idx.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    return idx


@pytest.fixture
async def stack(index, grpc_server, tmp_path):
    telemetry = RecordedTelemetry()
    broker = TapBroker(index)
    hub = DestinationHub(index)
    create_lab_access(tmp_path / "access")
    public = PublicService(
        index=index,
        telemetry=telemetry,
        broker=broker,
        hub=hub,
        source_name="local",
        gate=Gate(LabAccessReview(tmp_path / "access" / ACCESS_FILE)),
    )
    admin = (tmp_path / "access" / ADMIN_TOKEN_FILE).read_text().strip()

    def register(server: grpc.aio.Server) -> None:
        tpb_grpc.add_AgentTapServicer_to_server(AgentTapService(broker), server)
        ppb_grpc.add_PublicServicer_to_server(public, server)

    address = await grpc_server(register)
    async with (
        grpc.aio.insecure_channel(address) as channel,
        grpc.aio.insecure_channel(address, interceptors=bearer(admin)) as as_admin,
    ):
        yield broker, telemetry, tpb_grpc.AgentTapStub(channel), ppb_grpc.PublicStub(as_admin)


class Reader:
    """Reads a stream in a task: cancelling a pending `read()` would cancel the whole RPC."""

    def __init__(self, call) -> None:  # type: ignore[no-untyped-def]
        self.call = call
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task = tasks.spawn(self._pump(), name="test-reader")

    async def _pump(self) -> None:
        async for msg in self.call:
            self.queue.put_nowait(msg)

    async def get(self, timeout: float = 3.0):  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, within: float = 0.3) -> bool:
        await asyncio.sleep(within)
        return self.queue.empty()


async def connect_agent(stub: tpb_grpc.AgentTapStub, node: str) -> Reader:
    call = stub.Connect()
    await call.write(tpb.AgentTapMessage(hello=tpb.AgentHello(node=node, agent_version="t")))
    return Reader(call)


def event(sub: str, rid: int, kind: str) -> tpb.AgentTapMessage:
    ev = tpb.TapEvent(subscription_id=sub, request_id=rid, node="node1", tls=True)
    if kind == "req":
        ev.req.CopyFrom(tpb.RequestInit(method="GET", path="/api/list", authority="web"))
    elif kind == "rsp":
        ev.rsp.CopyFrom(tpb.ResponseInit(status=200, since_request_us=900))
    else:
        ev.end.CopyFrom(tpb.ResponseEnd(since_request_us=1000, response_bytes=512))
    return tpb.AgentTapMessage(event=ev)


async def test_tap_goes_to_every_agent_and_is_rate_limited(stack) -> None:
    """Every agent may see the pods' requests (a meshed client's agent reports the inbound side
    too: observe once), so every agent is told every pod; the rate is shared by the nodes that
    host them."""
    broker, _, agent_stub, public = stack
    agents = {n: await connect_agent(agent_stub, n) for n in ("node1", "node2", "node3")}
    while len(broker.agents) < 3:
        await asyncio.sleep(0.01)
    # Nobody taps: agents are told nothing.
    assert await agents["node1"].nothing()

    tap = Reader(
        public.Tap(
            ppb.TapRequest(
                resource=ppb.Resource(kind="deploy", namespace="emojivoto", name="web"), max_rps=5
            )
        )
    )
    starts = {}
    for node in ("node1", "node2", "node3"):
        starts[node] = (await agents[node].get()).start
        assert [p.name for p in starts[node].pods] == ["web-5d8f7-0", "web-5d8f7-1"]
        assert starts[node].max_rps == pytest.approx(2.5)
    sub_id = starts["node1"].id

    await agents["node2"].call.write(event(sub_id, 1, "req"))
    first = await tap.get()
    assert first.request_id == 1 and first.req.path == "/api/list"

    # A burst of 50 requests from node1: only about max_rps of them (burst 5) get through,
    # each admitted one with its response and end.
    for rid in range(100, 150):
        for kind in ("req", "rsp", "end"):
            await agents["node1"].call.write(event(sub_id, rid, kind))
    got: list[tpb.TapEvent] = []
    try:
        while True:
            got.append(await tap.get(0.5))
    except TimeoutError:
        pass
    reqs = [e.request_id for e in got if e.WhichOneof("kind") == "req"]
    assert 4 <= len(reqs) <= 6
    for rid in reqs:
        assert [e.WhichOneof("kind") for e in got if e.request_id == rid] == ["req", "rsp", "end"]
    assert {e.request_id for e in got} == set(reqs)

    tap.call.cancel()
    for node in ("node1", "node2", "node3"):
        assert (await agents[node].get()).stop == sub_id
    assert broker.streams == {}
    for agent in agents.values():
        await agent.call.done_writing()
    await tasks.cancel_all([a.task for a in agents.values()] + [tap.task])


async def test_a_tap_to_something_goes_only_to_the_agents_of_its_pods(stack) -> None:
    """`tap deploy/web --to deploy/web` takes the pods' outbound requests: only their own
    agents see those."""
    broker, _, agent_stub, public = stack
    agents = {n: await connect_agent(agent_stub, n) for n in ("node1", "node2", "node3")}
    while len(broker.agents) < 3:
        await asyncio.sleep(0.01)
    web = ppb.Resource(kind="deploy", namespace="emojivoto", name="web")
    tap = Reader(public.Tap(ppb.TapRequest(resource=web, to_resource=web, max_rps=5)))
    for node, pod in (("node1", "web-5d8f7-0"), ("node2", "web-5d8f7-1")):
        start = (await agents[node].get()).start
        assert [p.name for p in start.pods] == [pod]
        assert len(start.to_addresses) == 2
    assert await agents["node3"].nothing(0.2)
    tap.call.cancel()
    for agent in agents.values():
        await agent.call.done_writing()
    await tasks.cancel_all([a.task for a in agents.values()] + [tap.task])


async def test_tap_events_name_both_workloads_from_the_index(stack) -> None:
    """An agent knows the pod a tunnelled client came from, not always its workload (a pod
    behind no Service): the control plane fills it in from the index."""
    broker, _, agent_stub, public = stack
    agent = await connect_agent(agent_stub, "node1")
    while not broker.agents:
        await asyncio.sleep(0.01)
    tap = Reader(
        public.Tap(
            ppb.TapRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto", name="web"))
        )  # fmt: skip
    )
    sub_id = (await agent.get()).start.id
    msg = event(sub_id, 1, "req")
    msg.event.src.CopyFrom(tpb.TapPeer(ip="10.244.2.9", port=40000, namespace="emojivoto",
                                       pod="web-5d8f7-1"))  # fmt: skip
    msg.event.dst.CopyFrom(tpb.TapPeer(ip="10.244.1.9", port=8080, namespace="emojivoto",
                                       pod="web-5d8f7-0", workload="web",
                                       workload_kind="deployment"))  # fmt: skip
    await agent.call.write(msg)
    got = await tap.get()
    assert (got.src.workload_kind, got.src.workload, got.src.port) == ("deployment", "web", 40000)
    assert (got.dst.workload, got.dst.port) == ("web", 8080)
    tap.call.cancel()
    assert (await agent.get()).stop == sub_id
    await agent.call.done_writing()
    await tasks.cancel_all([agent.task, tap.task])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ppb.StatRequest(resource=ppb.Resource(kind="deploymnt")), "unknown resource kind"),
        (
            ppb.StatRequest(resource=ppb.Resource(kind="deploy"), window_seconds=3600),
            "window of 3600s is outside 10-900",
        ),
        (
            ppb.StatRequest(
                resource=ppb.Resource(kind="deploy"), to_resource=ppb.Resource(kind="cronjob")
            ),
            "unknown resource kind 'cronjob'",
        ),
    ],
)
async def test_bad_stat_queries_are_invalid_argument(stack, request_, message) -> None:
    public = stack[3]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await public.Stat(request_)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


async def test_bad_tap_kind_is_invalid_argument(stack) -> None:
    public = stack[3]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in public.Tap(ppb.TapRequest(resource=ppb.Resource(kind="secret"))):
            pass
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_stat_joins_the_index_with_the_telemetry_store(stack) -> None:
    _, telemetry, _, public = stack
    resp = await public.Stat(
        ppb.StatRequest(
            resource=ppb.Resource(kind="deploy", namespace="emojivoto"),
            from_resource=ppb.Resource(kind="ns", name="emojivoto"),
            window_seconds=60,
        )
    )
    (row,) = resp.rows
    assert (row.resource.kind, row.resource.name) == ("deployment", "web")
    assert (row.meshed_pods, row.total_pods) == (2, 2)
    assert row.success_rate == pytest.approx(0.9)
    assert row.rps == pytest.approx(10.0)
    assert row.latency_p99_ms == pytest.approx(9.0, rel=1 / 128)
    assert telemetry.queries[-1]["source"] == Selector("namespace", "", "emojivoto")
    assert telemetry.queries[-1]["window_s"] == 60

    nodes = await public.Stat(ppb.StatRequest(resource=ppb.Resource(kind="node")))
    assert [(r.resource.name, r.total_pods) for r in nodes.rows] == [
        ("node1", 1),
        ("node2", 1),
        ("node3", 0),
    ]
    assert not nodes.rows[0].HasField("success_rate")


async def test_workloads_nodes_and_version(stack) -> None:
    public = stack[3]
    wl = await public.ListWorkloads(ppb.ListWorkloadsRequest(namespace="emojivoto"))
    (web,) = wl.workloads
    assert (web.kind, web.name, web.pods, web.meshed_pods) == ("Deployment", "web", 2, 2)
    assert list(web.nodes) == ["node1", "node2"]
    assert dict(wl.namespaces_meshed) == {"emojivoto": True}
    nodes = await public.ListNodes(ppb.ListNodesRequest())
    by_name = {n.name: n for n in nodes.nodes}
    assert by_name["node2"].open_connections == 7 and by_name["node2"].agent_version == "0.1.0"
    assert by_name["node3"].pods == 0 and by_name["node3"].internal_ip == "172.18.0.3"
    version = await public.Version(ppb.VersionRequest())
    assert version.source == "local" and version.trust_domain == "cluster.local"


async def test_meshed_means_enrolled_by_a_live_agent_and_terminating_pods_do_not_count(
    stack, index
) -> None:
    """web-5d8f7-1's node has no live agent: not meshed, whatever its namespace says; a pod
    being deleted counts neither as a pod of its workload nor as ready."""
    _, telemetry, _, public = stack
    telemetry.enrolled = {("emojivoto", "web-5d8f7-0", "")}
    (row,) = (
        await public.Stat(
            ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto"))
        )
    ).rows
    assert (row.meshed_pods, row.total_pods) == (1, 2)
    (web,) = (await public.ListWorkloads(ppb.ListWorkloadsRequest(namespace="emojivoto"))).workloads
    assert (web.pods, web.ready_pods, web.meshed_pods) == (2, 2, 1)
    nodes = {n.name: n for n in (await public.ListNodes(ppb.ListNodesRequest())).nodes}
    assert (nodes["node1"].meshed_pods, nodes["node2"].meshed_pods) == (1, 0)

    leaving = index.pods[next(p for p in index.pods if p.name == "web-5d8f7-0")]
    obj = k.pod("emojivoto", "web-5d8f7-0", node="node1", ip=leaving.ip,
                owner=("ReplicaSet", "web-5d8f7"), sa="web", labels={"app": "web"})  # fmt: skip
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    index.apply(ObjectChanged(EventType.MODIFIED, "Pod", obj))
    (row,) = (
        await public.Stat(
            ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto"))
        )
    ).rows
    assert (row.meshed_pods, row.total_pods) == (0, 1)
    (web,) = (await public.ListWorkloads(ppb.ListWorkloadsRequest(namespace="emojivoto"))).workloads
    assert (web.pods, web.ready_pods, web.meshed_pods) == (1, 1, 0)
