"""Measure the control plane with 1000 pods and 200 services: RSS, CPU, change-to-delta latency.

Run: .venv/bin/python bench/controlplane_index.py
It lays out a lab-like state directory with synthetic objects (200 Deployments of 5 pods, one
Service each, 10 namespaces, 4 nodes), follows it with the local source into the index, serves
destination over gRPC on loopback, and subscribes from a separate thread with the sync client."""

from __future__ import annotations

import asyncio
import os
import queue
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.destination import DestinationHub, DestinationService  # noqa: E402
from controlplane.feed import Feed  # noqa: E402
from controlplane.index import ClusterIndex  # noqa: E402
from controlplane.sources.events import EventType, ObjectChanged  # noqa: E402
from controlplane.sources.local import LocalSource  # noqa: E402
from nodemesh import tasks  # noqa: E402
from nodemesh.api import destination_pb2 as pb  # noqa: E402
from nodemesh.api import destination_pb2_grpc as pb_grpc  # noqa: E402

SERVICES, PODS_PER, NAMESPACES, NODES = 200, 5, 10, 4


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def objects() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rv = 1
    for n in range(1, NODES + 1):
        out.append({"kind": "Node", "metadata": {"name": f"node{n}"}, "spec": {"podCIDR": ""}})
    for i in range(NAMESPACES):
        out.append(
            {
                "kind": "Namespace",
                "metadata": {"name": f"ns{i}", "labels": {"nodemesh.io/mesh": "enabled"}},
            }
        )
    for s in range(SERVICES):
        ns, app = f"ns{s % NAMESPACES}", f"app{s}"
        owner = {"kind": "Deployment", "name": app, "controller": True}
        out.append({"kind": "Deployment", "metadata": {"name": app, "namespace": ns}})
        out.append(
            {
                "kind": "ReplicaSet",
                "metadata": {"name": f"{app}-rs", "namespace": ns, "ownerReferences": [owner]},
            }
        )
        endpoints = []
        for p in range(PODS_PER):
            idx = s * PODS_PER + p
            ip = f"10.{244 + idx // 65000}.{idx // 250 % 256}.{idx % 250 + 2}"
            node = f"node{idx % NODES + 1}"
            out.append(
                {
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{app}-rs-{p}",
                        "namespace": ns,
                        "labels": {"app": app},
                        "ownerReferences": [
                            {"kind": "ReplicaSet", "name": f"{app}-rs", "controller": True}
                        ],
                    },
                    "spec": {"nodeName": node, "serviceAccountName": app},
                    "status": {
                        "podIP": ip,
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            )
            endpoints.append(
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "nodeName": node,
                    "targetRef": {"kind": "Pod", "name": f"{app}-rs-{p}", "namespace": ns},
                }
            )
        out.append(
            {
                "kind": "Service",
                "metadata": {"name": app, "namespace": ns},
                "spec": {
                    "clusterIP": f"10.96.{s // 250}.{s % 250 + 1}",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        )
        out.append(
            {
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{app}-x1y2z",
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": app},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }
        )
    for obj in out:
        rv += 1
        obj["metadata"]["resourceVersion"] = str(rv)
    return out


def write(root: Path, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    folder = root / obj["kind"] / meta["namespace"] if "namespace" in meta else root / obj["kind"]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{meta['name']}.tmp"
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    os.rename(tmp, folder / f"{meta['name']}.yaml")


def subscriber(address: str, arrivals: queue.Queue[tuple[int, float]]) -> None:
    """Sync gRPC client in its own thread: records when each revision arrives."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DestinationStub(channel)
        try:
            for update in stub.Subscribe(pb.SubscribeRequest(node="node1")):
                arrivals.put((update.revision, time.perf_counter()))
        except grpc.RpcError:
            pass  # the server stopped at the end of the run


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main() -> None:
    base_rss = rss_mb()
    objs = objects()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "objects"
        for obj in objs:
            write(root, obj)
        index = ClusterIndex()
        hub = DestinationHub(index, queue_size=10_000)
        source = LocalSource(tmp, interval=0.2)
        feed_task = tasks.spawn(Feed(source, index, [hub.publish]).run(), name="feed")
        cpu0, t0 = cpu_s(), time.perf_counter()
        while not index.synced:
            await asyncio.sleep(0.01)
        load_s, load_cpu = time.perf_counter() - t0, cpu_s() - cpu0
        print(f"objects: {len(objs)} ({len(index.pods)} pods, {len(index.services)} services)")
        print(f"initial load through the local source: {load_s:.2f}s wall, {load_cpu:.2f}s CPU")
        print(f"RSS: {rss_mb():.1f} MB (interpreter and imports before loading: {base_rss:.1f} MB)")

        server = grpc.aio.server()
        pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        arrivals: queue.Queue[tuple[int, float]] = queue.Queue()
        t_snap = time.perf_counter()
        thread = threading.Thread(
            target=subscriber, args=(f"127.0.0.1:{port}", arrivals), daemon=True
        )
        thread.start()
        await asyncio.to_thread(arrivals.get)
        snap_bytes = sum(u.ByteSize() for u in hub.snapshot("node1"))
        print(
            f"snapshot for node1: {snap_bytes / 1024:.0f} KiB, first part after "
            f"{(time.perf_counter() - t_snap) * 1000:.1f} ms (includes channel connect)"
        )

        cpu0 = cpu_s()
        await asyncio.sleep(5)
        print(
            f"idle CPU (local source polling {len(objs)} files every 0.2s): "
            f"{(cpu_s() - cpu0) / 5 * 100:.1f}% of one core"
        )

        # Index -> subscriber: a pod's readiness flips, the index recomputes, the delta is sent.
        pods = [o for o in objs if o["kind"] == "Pod" and o["spec"]["nodeName"] == "node1"]
        latencies = []
        cpu0 = cpu_s()
        for i in range(300):
            pod = pods[i % len(pods)]
            cond = pod["status"]["conditions"][0]
            cond["status"] = "False" if cond["status"] == "True" else "True"
            pod["metadata"]["resourceVersion"] = str(10_000 + i)
            start = time.perf_counter()
            hub.publish(index.apply(ObjectChanged(EventType.MODIFIED, "Pod", pod)), index.revision)
            want = index.revision
            while True:
                rev, arrived = await asyncio.to_thread(arrivals.get)
                if rev >= want:
                    break
            latencies.append((arrived - start) * 1000)
        per_change_cpu = (cpu_s() - cpu0) / 300 * 1000
        print(
            f"index change -> delta at a gRPC subscriber (300 changes): "
            f"p50 {pct(latencies, 0.5):.2f} ms, p99 {pct(latencies, 0.99):.2f} ms, "
            f"max {max(latencies):.2f} ms; {per_change_cpu:.2f} ms CPU per change (both ends)"
        )

        # File written -> delta: includes the local source's poll interval (0.2 s).
        file_lat = []
        for i in range(20):
            pod = pods[i]
            pod["metadata"]["resourceVersion"] = str(20_000 + i)
            pod["metadata"].setdefault("labels", {})["bench"] = str(i)
            want = index.revision + 1
            start = time.perf_counter()
            write(root, pod)
            while True:
                rev, arrived = await asyncio.to_thread(arrivals.get)
                if rev >= want:
                    break
            file_lat.append((arrived - start) * 1000)
        print(
            f"lab file rewritten -> delta at subscriber (20 changes, poll 0.2 s): "
            f"median {statistics.median(file_lat):.0f} ms, max {max(file_lat):.0f} ms"
        )
        print(f"RSS at the end: {rss_mb():.1f} MB")
        await server.stop(grace=None)
        await tasks.cancel_all([feed_task])


if __name__ == "__main__":
    asyncio.run(main())
