"""Measure the node agent with 100 enrolled pods: RSS, and how long ADD takes (p50/p99).

Run as root: .venv/bin/python bench/agent_pods.py [--pods 100]
It makes a node netns with a bridge and N pod netns (veth + address each), serves the real
destination stream from a local object directory on a thread, starts the agent in the node
netns, enrols every pod with the real nodemesh-cni executable (as a runtime would: env + stdin),
prints the agent's RSS before and after and the ADD timings, then DELs every pod and removes
every netns, process and file it made (also when interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodemesh_cni.agentclient import call_agent  # noqa: E402
from nodemesh_cni.protocol import Pod, PodIP, Request  # noqa: E402

from controlplane.destination import DestinationHub, DestinationService  # noqa: E402
from controlplane.feed import Feed  # noqa: E402
from controlplane.index import ClusterIndex  # noqa: E402
from controlplane.sources.local import LocalSource  # noqa: E402
from nodemesh import tasks  # noqa: E402
from nodemesh.api import destination_pb2_grpc as pb_grpc  # noqa: E402

PLUGIN = Path(sys.executable).parent / "nodemesh-cni"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def put(root: Path, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    folder = root / "objects" / obj["kind"] / meta.get("namespace", "")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{meta['name']}.yaml").write_text(yaml.safe_dump(obj))


def write_objects(root: Path, pods: int) -> None:
    meta = {"name": "bench", "labels": {"nodemesh.io/mesh": "enabled"}, "resourceVersion": "1"}
    put(root, {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    put(root, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}, "spec": {}})
    for i in range(pods):
        put(
            root,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"p{i}",
                    "namespace": "bench",
                    "uid": f"uid-p{i}",
                    "resourceVersion": str(10 + i),
                },
                "spec": {"nodeName": "node1", "containers": [{}]},
                "status": {"phase": "Pending"},
            },
        )


class ControlPlane(threading.Thread):
    def __init__(self, state_dir: Path, address: str) -> None:
        super().__init__(daemon=True, name="controlplane")
        self.state_dir, self.address = state_dir, address
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None

    def run(self) -> None:
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self.stop_event = asyncio.Event()
        index = ClusterIndex()
        hub = DestinationHub(index)
        feed = Feed(LocalSource(self.state_dir, interval=0.1), index, [hub.publish])
        feed_task = tasks.spawn(feed.run(), name="feed")
        server = grpc.aio.server()
        pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), server)
        server.add_insecure_port(self.address)
        await server.start()
        self.ready.set()
        await self.stop_event.wait()
        await server.stop(grace=None)
        await tasks.cancel_all([feed_task])

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(10)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def private_mib(pid: int) -> float:
    """Memory only this process holds (RSS minus shared library and file pages)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def cni_env(command: str, netns: str, name: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"ctr-{name}",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME={name};K8S_POD_UID=uid-{name}",
    }


def delete_all(pods: int, prefix: str, sock: Path) -> None:
    conf = {"cniVersion": "1.0.0", "name": "bench", "type": "nodemesh-cni"}
    conf.update(agentSocket=str(sock), logFile="")
    for i in range(pods):
        netns = f"/run/netns/{prefix}-p{i}"
        subprocess.run(
            [str(PLUGIN)], input=json.dumps(conf).encode(), env=cni_env("DEL", netns, f"p{i}"),
            capture_output=True, timeout=60, check=True,
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument(
        "--hold", type=float, default=0.0,
        help="seconds to keep the pods enrolled before DEL (to inspect the agent: SIGUSR2)",
    )  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    prefix = f"nmb-{secrets.token_hex(3)}"
    node = f"{prefix}-node"
    made: list[str] = []
    agent: subprocess.Popen[bytes] | None = None
    cp: ControlPlane | None = None
    with tempfile.TemporaryDirectory(prefix="nodemesh-bench-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            sh("ip", "netns", "add", node)
            made.append(node)
            sh("ip", "-n", node, "link", "set", "lo", "up")
            sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", node, "addr", "add", "10.78.0.1/16", "dev", "br0")
            sh("ip", "-n", node, "link", "set", "br0", "up")
            ips = {}
            t0 = time.monotonic()
            for i in range(args.pods):
                ns = f"{prefix}-p{i}"
                ip = f"10.78.{1 + i // 250}.{1 + i % 250}"
                ips[i] = ip
                sh("ip", "netns", "add", ns)
                made.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh(
                    "ip",
                    "-n",
                    ns,
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    f"v{i}",
                    "netns",
                    node,
                )
                sh("ip", "-n", ns, "addr", "add", f"{ip}/16", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", node, "link", "set", f"v{i}", "master", "br0", "up")
            print(f"made {args.pods} pod netns in {time.monotonic() - t0:.1f}s")

            write_objects(tmp, args.pods)
            cp = ControlPlane(tmp, f"unix:{tmp / 'cp.sock'}")
            cp.start()
            assert cp.ready.wait(20)
            sock = tmp / "cni.sock"
            log = open(tmp / "agent.log", "wb")
            agent = subprocess.Popen(
                ["ip", "netns", "exec", node, sys.executable, "-m", "nodeagent.main",
                 "--node", "node1", "--cni-socket", str(sock),
                 "--state-file", str(tmp / "state.json"),
                 "--controlplane", f"unix:{tmp / 'cp.sock'}", "--controlplane-insecure",
                 "--admin-addr", "127.0.0.1:4191", "--drain-seconds", "1",
                 "--handover-wait-seconds", "0.1"],
                stdout=log, stderr=log, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while True:
                try:
                    if call_agent(str(sock), Request(command="status"), timeout=2).ok:
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline or agent.poll() is not None:
                    print((tmp / "agent.log").read_text()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(0.1)
            time.sleep(0.5)
            rss_idle, uss_idle = rss_mib(agent.pid), private_mib(agent.pid)
            # What starting the plugin process costs on its own (VERSION talks to nobody).
            start_ms = []
            for _ in range(20):
                started = time.perf_counter()
                subprocess.run(
                    [str(PLUGIN)], input=b'{"cniVersion": "1.0.0"}',
                    env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30,
                )  # fmt: skip
                start_ms.append((time.perf_counter() - started) * 1000)

            plugin_ms: list[float] = []
            agent_ms: list[float] = []
            for i in range(args.pods):
                netns = f"/run/netns/{prefix}-p{i}"
                conf = {
                    "cniVersion": "1.0.0",
                    "name": "bench",
                    "type": "nodemesh-cni",
                    "agentSocket": str(sock),
                    "logFile": "",
                    "excludeNamespaces": [],
                    "prevResult": {
                        "cniVersion": "1.0.0",
                        "interfaces": [{"name": "eth0", "sandbox": netns}],
                        "ips": [{"address": f"{ips[i]}/16", "interface": 0}],
                    },
                }
                started = time.perf_counter()
                done = subprocess.run(
                    [str(PLUGIN)], input=json.dumps(conf).encode(),
                    env=cni_env("ADD", netns, f"p{i}"), capture_output=True, timeout=60,
                )  # fmt: skip
                plugin_ms.append((time.perf_counter() - started) * 1000)
                if done.returncode != 0:
                    print(f"ADD p{i} failed: {done.stdout.decode()}", file=sys.stderr)
                    return 1
                # The same request straight to the agent (already enrolled: the repeat path)
                # would not measure enrolment, so the agent-side time is read from its metric.
            time.sleep(1.0)
            rss_full, uss_full = rss_mib(agent.pid), private_mib(agent.pid)
            threads = len(os.listdir(f"/proc/{agent.pid}/task"))
            if args.hold:
                print(f"holding {args.hold:.0f}s: agent pid {agent.pid}", flush=True)
                time.sleep(args.hold)
            fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
            delete_all(args.pods, prefix, sock)
            # The agent trims its heap a moment after the last pod of a burst left.
            time.sleep(4.0)
            rss_left, uss_left = rss_mib(agent.pid), private_mib(agent.pid)
            # The same enrolments again, straight over the socket: the agent's share alone.
            for i in range(args.pods):
                pod = Pod(
                    container_id=f"ctr-p{i}", netns=f"/run/netns/{prefix}-p{i}", ifname="eth0",
                    namespace="bench", name=f"p{i}", uid=f"uid-p{i}",
                    ips=(PodIP(address=f"{ips[i]}/16"),),
                )  # fmt: skip
                started = time.perf_counter()
                reply = call_agent(str(sock), Request(command="add", pod=pod), timeout=30)
                agent_ms.append((time.perf_counter() - started) * 1000)
                if not (reply.ok and reply.meshed):
                    print(f"direct ADD p{i}: {reply}", file=sys.stderr)
                    return 1
            print(
                f"agent RSS: {rss_idle:.1f} MiB with 0 pods, {rss_full:.1f} MiB with {args.pods}"
                f" pods ({(rss_full - rss_idle) * 1024 / args.pods:.0f} KiB per pod);"
                f" private (USS) {uss_idle:.1f} -> {uss_full:.1f} MiB; {threads} threads,"
                f" {fds} fds; after they left: RSS {rss_left:.1f} MiB, USS {uss_left:.1f} MiB"
            )
            print(
                f"ADD through nodemesh-cni: p50 {statistics.median(plugin_ms):.1f} ms,"
                f" p99 {percentile(plugin_ms, 0.99):.1f} ms, max {max(plugin_ms):.1f} ms"
                f" (starting the plugin process alone: p50 {statistics.median(start_ms):.1f} ms)"
            )
            print(
                f"ADD inside the agent (socket request to reply): p50"
                f" {statistics.median(agent_ms):.1f} ms, p99 {percentile(agent_ms, 0.99):.1f} ms"
            )
            delete_all(args.pods, prefix, sock)
            return 0
        finally:
            if agent is not None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(15)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait(5)
            if cp is not None:
                cp.stop()
            for ns in reversed(made):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
