"""Two nodemesh-controlplane replicas (real processes on 127.0.0.2 and 127.0.0.3, found as the
control plane's pods in the index): each agent reports to one of them, and either answers stat
with the whole cluster's numbers; a tap through either reaches an agent connected to the other;
killing one loses no stats and the other keeps tapping."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cp_objects as k
import grpc
import pytest

from nodeagent.observe.events import Peer, RequestStarted
from nodeagent.observe.sink import AgentSink
from nodeagent.upstream.channel import open_channel
from nodeagent.upstream.tap import TapClient
from nodemesh import tasks
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.api import telemetry_pb2 as tpb
from nodemesh.histogram import bucket_index
from nodemesh.identity import CA_FILE, create_issuer_files
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access

pytestmark = pytest.mark.timeout(120)
REPLICAS = {"cp-a": "127.0.0.2", "cp-b": "127.0.0.3"}
METHOD = "/nodemesh.telemetry.v1.Telemetry/Report"


def free_port() -> int:
    # Free on every loopback address we use: bound on all of them for the check.
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def ready(ip: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def replicas(tmp_path: Path):  # type: ignore[no-untyped-def]
    lab = k.LabDir(tmp_path / "lab")
    for obj in k.web_app(replicas=2):
        lab.put(obj)
    lab.put(k.namespace("nodemesh", meshed=False))
    for name, ip in REPLICAS.items():
        lab.put(
            k.pod("nodemesh", name, node="node1", ip=ip, sa="nodemesh-controlplane",
                  labels={"app.kubernetes.io/name": "nodemesh-controlplane"})
        )  # fmt: skip
    issuer = create_issuer_files(tmp_path / "identity", nodes=["node1", "node2"])
    create_lab_access(tmp_path / "access")
    ports = {name: free_port() for name in ("agent", "public", "admin")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in REPLICAS}
    try:
        for name, ip in REPLICAS.items():
            procs[name] = subprocess.Popen(
                [
                    sys.executable, "-m", "controlplane.main", "--source=local",
                    f"--state-dir={tmp_path / 'lab'}",
                    f"--identity-dir={tmp_path / 'identity'}",
                    f"--access-file={tmp_path / 'access' / ACCESS_FILE}",
                    f"--agent-addr={ip}:{ports['agent']}",
                    f"--public-addr={ip}:{ports['public']}",
                    f"--admin-addr={ip}:{ports['admin']}",
                    f"--pod-name={name}", "--drain-seconds=1",
                ],
                stdout=logs[name], stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        for name, ip in REPLICAS.items():
            while not ready(ip, ports["admin"]):
                assert procs[name].poll() is None, f"{name} exited"
                assert time.monotonic() < deadline, f"{name} not ready"
                time.sleep(0.1)
        admin = (tmp_path / "access" / ADMIN_TOKEN_FILE).read_text().strip()
        yield procs, ports, issuer, admin
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        for log in logs.values():
            log.close()


def reports_metrics(ip: str, port: int) -> list[str]:
    with urllib.request.urlopen(f"http://{ip}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [line for line in text.splitlines() if line.startswith("nodemesh_telemetry_reports")]


def agent_channel(ip: str, port: int, issuer) -> grpc.aio.Channel:  # type: ignore[no-untyped-def]
    """A grpcio channel to a replica's agent port (send_reports puts the token on its call)."""
    creds = grpc.ssl_channel_credentials(root_certificates=issuer.anchor.certificate_pem())
    return grpc.aio.secure_channel(
        f"{ip}:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def report(node: str, pod: str, responses: int, sequence: int) -> bytes:
    web = tpb.Peer(namespace="emojivoto", deployment="web", pod=pod,
                   identity="spiffe://cluster.local/ns/emojivoto/sa/web")  # fmt: skip
    bot = tpb.Peer(namespace="emojivoto", deployment="vote-bot", pod="vote-bot-0")
    r = tpb.AgentReport(node=node, agent_version="test", sequence=sequence, interval_ms=1000)
    r.requests.add(
        direction=tpb.INBOUND, src=bot, dst=web, protocol=tpb.HTTP1, status_code=200,
        classification=tpb.SUCCESS, tls=True, responses=responses,
        latency=tpb.Histogram(buckets=[bucket_index(2000)], counts=[responses]),
    )  # fmt: skip
    return r.SerializeToString()


async def send_reports(channel: grpc.aio.Channel, token: str, reports: list[bytes]) -> None:
    call = channel.stream_stream(
        METHOD, request_serializer=lambda b: b, response_deserializer=tpb.ReportAck.FromString
    )(metadata=(("authorization", f"Bearer {token}"),))
    for raw in reports:
        await call.write(raw)
        ack = await call.read()
        assert ack.accepted, ack.reason
    await call.done_writing()


async def web_requests(ip: str, port: int, admin: str) -> int:
    async with grpc.aio.insecure_channel(f"{ip}:{port}") as channel:
        answer = await ppb_grpc.PublicStub(channel).Stat(
            ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto")),
            metadata=(("authorization", f"Bearer {admin}"),),
            timeout=10,
        )
    return sum(r.requests for r in answer.rows if r.resource.name == "web")


async def connected_agents(ip: str, port: int, admin: str) -> set[str]:
    async with grpc.aio.insecure_channel(f"{ip}:{port}") as channel:
        answer = await ppb_grpc.PublicStub(channel).ListNodes(
            ppb.ListNodesRequest(), metadata=(("authorization", f"Bearer {admin}"),), timeout=10
        )
    return {n.name for n in answer.nodes if n.agent_connected}


async def eventually(check, want, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_either_replica_answers_for_the_whole_cluster_and_survives_the_other(
    replicas,
) -> None:
    procs, ports, issuer, admin = replicas
    a, b = REPLICAS["cp-a"], REPLICAS["cp-b"]
    node1 = agent_channel(a, ports["agent"], issuer)  # node1's agent reached replica a
    node2 = agent_channel(b, ports["agent"], issuer)  # node2's agent reached replica b
    sink = AgentSink(node="node2")
    node2_tap = open_channel(  # node2's agent's own channel (grpclib), as the agent opens it
        f"{b}:{ports['agent']}",
        insecure=False,
        ca_file=issuer.directory / CA_FILE,
        token=lambda: issuer.tokens["node2"],
        server_name="localhost",
    )
    tap_client = TapClient(channel=node2_tap, taps=sink.taps)
    tap_task = tasks.spawn(tap_client.run(), name="node2 tap client")
    tap_call = None
    try:
        await send_reports(node1, issuer.tokens["node1"], [report("node1", "web-5d8f7-0", 30, 1)])
        await send_reports(node2, issuer.tokens["node2"], [report("node2", "web-5d8f7-1", 12, 1)])
        # Each replica has the other's agent's reports too.
        for ip in (a, b):
            got = await eventually(lambda ip=ip: web_requests(ip, ports["public"], admin), 42)
            assert got == 42, (ip, reports_metrics(ip, ports["admin"]))
            # `nodemesh check` asks one replica whether every agent is connected.
            assert await connected_agents(ip, ports["public"], admin) == {"node1", "node2"}

        # A tap through replica a reaches node2's agent, connected to b, and its events return.
        async with grpc.aio.insecure_channel(f"{a}:{ports['public']}") as public:
            tap_call = ppb_grpc.PublicStub(public).Tap(
                ppb.TapRequest(
                    resource=ppb.Resource(kind="deploy", namespace="emojivoto", name="web")
                ),
                metadata=(("authorization", f"Bearer {admin}"),),
            )
            deadline = time.monotonic() + 20
            while not sink.taps.subscriptions:
                assert time.monotonic() < deadline, "the tap never reached node2's agent"
                await asyncio.sleep(0.1)
            src = Peer("10.244.1.99", "emojivoto", "vote-bot-0", "Deployment", "vote-bot")
            dst = Peer("10.244.2.11", "emojivoto", "web-5d8f7-1", "Deployment", "web", "web")
            assert sink.tapping(src, dst)
            sink.request_started(
                RequestStarted(
                    req_id=7, conn_id=1, direction="inbound", src=src, dst=dst,
                    protocol="http1", tls=True, method="GET", authority="web", path="/vote",
                    at=time.time(),
                )
            )  # fmt: skip
            event = await asyncio.wait_for(tap_call.read(), 20)
            assert event.node == "node2" and event.req.path == "/vote"
            tap_call.cancel()

        # Replica a dies: b lost nothing, and node1's agent (reconnected to b) goes on.
        procs["cp-a"].send_signal(signal.SIGKILL)
        procs["cp-a"].wait(10)
        assert await web_requests(b, ports["public"], admin) == 42
        node1_again = agent_channel(b, ports["agent"], issuer)
        try:
            await send_reports(
                node1_again, issuer.tokens["node1"], [report("node1", "web-5d8f7-0", 5, 2)]
            )
        finally:
            await node1_again.close()
        assert await eventually(lambda: web_requests(b, ports["public"], admin), 47) == 47
    finally:
        if tap_call is not None:
            tap_call.cancel()
        await tasks.cancel_all([tap_task])
        await node1.close()
        await node2.close()
        node2_tap.close()
        await asyncio.sleep(0.1)  # the aborted socket is closed on the loop's next turn
