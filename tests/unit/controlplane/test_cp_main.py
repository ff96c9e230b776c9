"""The nodemesh-controlplane process: lab files in, TLS agent API, admin endpoints, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cp_objects as k
import grpc
import pytest

from nodemesh import keymaker
from nodemesh.api import destination_pb2 as dpb
from nodemesh.api import destination_pb2_grpc as dpb_grpc
from nodemesh.api import identity_pb2 as ipb
from nodemesh.api import identity_pb2_grpc as ipb_grpc
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.api import telemetry_pb2 as tpb
from nodemesh.histogram import bucket_index
from nodemesh.identity import create_issuer_files
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def controlplane(tmp_path: Path):  # type: ignore[no-untyped-def]
    lab = k.LabDir(tmp_path / "lab")
    for obj in k.web_app(replicas=2):
        lab.put(obj)
    # The mesh's own pods on node1: neither is meshed, so neither identity may be issued.
    lab.put(k.namespace("nodemesh", meshed=False))
    lab.put(k.pod("nodemesh", "cp-0", node="node1", ip="10.244.1.3", sa="nodemesh-controlplane"))
    lab.put(
        k.pod(
            "nodemesh", "agent-a", node="node1", ip="172.18.0.1", sa="nodemesh-agent",
            host_network=True,
        )
    )  # fmt: skip
    # Router mode: node1's agent tunnels an unmeshed pod's router requests as that pod, so it may
    # hold that identity; not a hostNetwork pod's, nor a pod's of another node.
    lab.put(k.namespace("legacy", meshed=False))
    lab.put(k.pod("legacy", "app-0", node="node1", ip="10.244.1.9", sa="legacy-app"))
    lab.put(k.pod("legacy", "far-0", node="node2", ip="10.244.2.9", sa="legacy-far"))
    lab.put(k.pod("legacy", "hostnet-0", node="node1", ip="172.18.0.1", sa="legacy-host",
                  host_network=True))  # fmt: skip
    issuer = create_issuer_files(tmp_path / "identity", nodes=["node1", "node2"])
    create_lab_access(tmp_path / "access")
    ports = {name: free_port() for name in ("agent", "public", "admin")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane.main",
            "--source=local",
            f"--state-dir={tmp_path / 'lab'}",
            f"--identity-dir={tmp_path / 'identity'}",
            f"--access-file={tmp_path / 'access' / ACCESS_FILE}",
            f"--agent-addr=127.0.0.1:{ports['agent']}",
            f"--public-addr=127.0.0.1:{ports['public']}",
            f"--admin-addr=127.0.0.1:{ports['admin']}",
            "--drain-seconds=1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if http_get(f"http://127.0.0.1:{ports['admin']}/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        yield proc, ports, issuer, (tmp_path / "access" / ADMIN_TOKEN_FILE).read_text().strip()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


async def test_serves_agents_over_tls_with_tokens_and_stops_on_sigterm(controlplane) -> None:
    proc, ports, issuer, admin = controlplane
    status, metrics = http_get(f"http://127.0.0.1:{ports['admin']}/metrics")
    assert status == 200 and "nodemesh_index_objects" in metrics
    assert http_get(f"http://127.0.0.1:{ports['admin']}/live")[0] == 200

    creds = grpc.ssl_channel_credentials(root_certificates=issuer.anchor.certificate_pem())
    async with grpc.aio.secure_channel(f"localhost:{ports['agent']}", creds) as channel:
        stub = dpb_grpc.DestinationStub(channel)
        token = [("authorization", f"Bearer {issuer.tokens['node1']}")]
        call = stub.Subscribe(dpb.SubscribeRequest(node="node1"), metadata=token)
        first = await asyncio.wait_for(call.read(), 5)
        assert first.snapshot.last
        assert "web-5d8f7-0" in [p.key.name for p in first.snapshot.pods]
        call.cancel()
        # node2's token cannot read node1's table.
        other = [("authorization", f"Bearer {issuer.tokens['node2']}")]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Subscribe(dpb.SubscribeRequest(node="node1"), metadata=other):
                pass
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Subscribe(dpb.SubscribeRequest(node="node1")):
                pass
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['public']}") as channel:
        public = ppb_grpc.PublicStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await public.Version(ppb.VersionRequest())
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        as_admin = [("authorization", f"Bearer {admin}")]
        version = await public.Version(ppb.VersionRequest(), metadata=as_admin)
        assert version.synced and version.source == "local"
        stat = await public.Stat(
            ppb.StatRequest(resource=ppb.Resource(kind="deploy"), all_namespaces=True),
            metadata=as_admin,
        )
        assert [(r.resource.name, r.total_pods, r.requests) for r in stat.rows] == [("web", 2, 0)]

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "stopped" in (proc.stdout.read() if proc.stdout else "")


async def test_the_ca_issues_identities_of_meshed_pods_and_router_callers_on_the_node(
    controlplane,
) -> None:
    _, ports, issuer, _ = controlplane
    creds = grpc.ssl_channel_credentials(root_certificates=issuer.anchor.certificate_pem())
    token = [("authorization", f"Bearer {issuer.tokens['node1']}")]
    async with grpc.aio.secure_channel(f"localhost:{ports['agent']}", creds) as channel:
        stub = ipb_grpc.IdentityStub(channel)

        async def certify(identity: str) -> grpc.StatusCode:
            request = ipb.CertifyRequest(
                csr=keymaker.make_csr(identity, keymaker.new_key()), spiffe_id=identity
            )
            try:
                await stub.Certify(request, metadata=token, timeout=10)
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        assert await certify("spiffe://cluster.local/ns/emojivoto/sa/web") == grpc.StatusCode.OK
        for sa in ("nodemesh-controlplane", "nodemesh-agent"):
            identity = f"spiffe://cluster.local/ns/nodemesh/sa/{sa}"
            assert await certify(identity) == grpc.StatusCode.PERMISSION_DENIED, identity
        legacy = "spiffe://cluster.local/ns/legacy/sa/"
        assert await certify(legacy + "legacy-app") == grpc.StatusCode.OK  # a router caller
        for sa in ("legacy-far", "legacy-host"):
            assert await certify(legacy + sa) == grpc.StatusCode.PERMISSION_DENIED, sa


def _telemetry_workers(pid: int) -> list[int]:
    """The control plane's child processes started by multiprocessing (not its resource
    tracker)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


def _the_telemetry_worker(pid: int) -> int:
    """The one telemetry worker (on a loaded machine the fixture may hand over a control plane
    that is still starting)."""
    deadline = time.monotonic() + 60
    while not (workers := _telemetry_workers(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) == 1, f"expected one telemetry worker process, found {workers}"
    return workers[0]


async def test_pod_changes_reach_agents_while_the_telemetry_store_is_busy(
    controlplane, tmp_path: Path
) -> None:
    """Reports and Stat queries run in the control plane's telemetry worker, not on the loop
    that serves the agents' destination streams: with that worker stopped (as busy as it can
    be), a pod change still reaches the agent; Stat answers once it runs again. (One namespace:
    the all-namespaces Stat is built ahead after a start, and may be answered from that.)"""
    proc, ports, issuer, admin = controlplane
    workers = _telemetry_workers(proc.pid)
    assert len(workers) == 1, f"expected one telemetry worker process, found {workers}"
    creds = grpc.ssl_channel_credentials(root_certificates=issuer.anchor.certificate_pem())
    token = [("authorization", f"Bearer {issuer.tokens['node1']}")]
    as_admin = [("authorization", f"Bearer {admin}")]
    os.kill(workers[0], signal.SIGSTOP)
    try:
        async with (
            grpc.aio.secure_channel(f"localhost:{ports['agent']}", creds) as agents,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['public']}") as public,
        ):
            stat = asyncio.ensure_future(
                ppb_grpc.PublicStub(public).Stat(
                    ppb.StatRequest(resource=ppb.Resource(kind="pod", namespace="emojivoto")),
                    metadata=as_admin,
                    timeout=60,
                )
            )
            call = dpb_grpc.DestinationStub(agents).Subscribe(
                dpb.SubscribeRequest(node="node1"), metadata=token
            )
            first = await asyncio.wait_for(call.read(), 15)
            assert first.snapshot.last
            k.LabDir(tmp_path / "lab").put(
                k.pod("emojivoto", "late-0", node="node1", ip="10.244.1.77", sa="web")
            )
            deadline = time.monotonic() + 20
            seen: list[str] = []
            while "late-0" not in seen and time.monotonic() < deadline:
                msg = await asyncio.wait_for(call.read(), deadline - time.monotonic())
                seen += [p.key.name for p in msg.delta.meshed_pods_updated]
            assert "late-0" in seen
            assert not stat.done()  # the store's side is still stopped
            os.kill(workers[0], signal.SIGCONT)
            answer = await asyncio.wait_for(stat, 30)
            assert "web-5d8f7-0" in [r.resource.name for r in answer.rows]
            call.cancel()
    finally:
        os.kill(workers[0], signal.SIGCONT)


def _web_report(responses: int, sequence: int) -> bytes:
    web = tpb.Peer(namespace="emojivoto", deployment="web", pod="web-5d8f7-0",
                   identity="spiffe://cluster.local/ns/emojivoto/sa/web")  # fmt: skip
    bot = tpb.Peer(namespace="emojivoto", deployment="vote-bot", pod="vote-bot-0")
    r = tpb.AgentReport(node="node1", agent_version="test", sequence=sequence, interval_ms=1000)
    r.requests.add(
        direction=tpb.INBOUND, src=bot, dst=web, protocol=tpb.HTTP1, status_code=200,
        classification=tpb.SUCCESS, tls=True, responses=responses,
        latency=tpb.Histogram(buckets=[bucket_index(2000)], counts=[responses]),
    )  # fmt: skip
    return r.SerializeToString()


async def test_a_polled_stat_answers_at_once_and_shows_new_traffic_within_seconds(
    controlplane,
) -> None:
    """Stat answers are kept and rebuilt each second while someone asks: a caller polling Stat
    gets the kept answer without waiting for the store (here: with the telemetry worker
    stopped), and an answer is rebuilt within a second and never given 2 s after it was built,
    so traffic reported 3 s before a call (a rebuild and the 2 s, with room for a slow build)
    is in its answer."""
    proc, ports, issuer, admin = controlplane
    worker = _the_telemetry_worker(proc.pid)
    creds = grpc.ssl_channel_credentials(root_certificates=issuer.anchor.certificate_pem())
    as_admin = [("authorization", f"Bearer {admin}")]
    request = ppb.StatRequest(resource=ppb.Resource(kind="pod", namespace="emojivoto"))

    async with (
        grpc.aio.secure_channel(f"localhost:{ports['agent']}", creds) as agents,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['public']}") as channel,
    ):
        reports = agents.stream_stream(
            "/nodemesh.telemetry.v1.Telemetry/Report",
            request_serializer=lambda b: b,
            response_deserializer=tpb.ReportAck.FromString,
        )(metadata=(("authorization", f"Bearer {issuer.tokens['node1']}"),))
        public = ppb_grpc.PublicStub(channel)

        async def web_requests() -> int:
            answer = await public.Stat(request, metadata=as_admin, timeout=30)
            return sum(r.requests for r in answer.rows if r.resource.name == "web-5d8f7-0")

        async def report(responses: int, sequence: int) -> None:
            await reports.write(_web_report(responses, sequence))
            ack = await reports.read()
            assert ack.accepted, ack.reason

        await report(10, 1)
        assert await web_requests() == 10
        os.kill(worker, signal.SIGSTOP)
        try:
            # Asked again at once: the kept answer, though the store cannot answer now.
            assert await asyncio.wait_for(web_requests(), 1.0) == 10
        finally:
            os.kill(worker, signal.SIGCONT)
        await report(5, 2)
        await asyncio.sleep(3)
        assert await web_requests() == 15
        await reports.done_writing()


def test_the_telemetry_worker_loads_the_store_not_the_servers(controlplane) -> None:
    """The worker process holds the stats store; spawning it used to run controlplane.main
    again in it, with every gRPC server of the control plane (~90 MiB instead of ~20)."""
    proc, _, _, _ = controlplane
    worker = _the_telemetry_worker(proc.pid)
    maps = Path(f"/proc/{worker}/maps").read_text()
    assert "cygrpc" not in maps  # gRPC's native library
    assert "cygrpc" in Path(f"/proc/{proc.pid}/maps").read_text()
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{worker}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    assert rss_kib < 48 * 1024, f"telemetry worker holds {rss_kib} KiB"


def test_the_telemetry_worker_ends_with_a_killed_control_plane(controlplane) -> None:
    """SIGKILL (or the OOM killer) gives the control plane no chance to stop its worker; the
    worker stopped on its own instead of holding its memory for good."""
    proc, _, _, _ = controlplane
    worker = _the_telemetry_worker(proc.pid)
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break  # ended; its new parent reaps it
        except OSError:
            break
        time.sleep(0.2)
    assert time.monotonic() < deadline, f"telemetry worker {worker} still running"


def test_a_telemetry_worker_whose_control_plane_died_while_it_started_ends() -> None:
    """A control plane killed while its worker was still starting (a loaded machine, a test's
    timeout) left a worker that took pid 1 for its control plane and watched it for good."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    code = (
        "from controlplane import telemetry_child as c\n"
        f"c.init(100, 100, 'WARNING', {gone.pid})\n"
        "import time; time.sleep(30)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[3])
    try:
        assert worker.wait(10) == 0  # ended by itself
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
