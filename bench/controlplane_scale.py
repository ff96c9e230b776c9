"""The control plane's limits: simulated agents against one real `nodemesh-controlplane` process.

Run (full size, by hand; ~3 minutes):
    .venv/bin/python -m bench.controlplane_scale --out bench/results
Small (what CI runs through tests/unit/controlplane/test_cp_scale_bench.py):
    .venv/bin/python -m bench.controlplane_scale --nodes 20 --phase-seconds 3 --churn 10 --out DIR

What runs:
- the control plane as it runs in the lab: `python -m controlplane.main --source=local` over a
  state directory of YAML objects (N nodes x P pods, Services of S pods with their
  EndpointSlices, Deployments, ReplicaSets), bootstrap tokens per node, the CA, TLS on the agent
  API, the lab's grant table on the public API;
- one simulated agent per node, in W worker processes: a TLS connection of its own, its node's
  bootstrap token, one Identity.Certify (a real CSR) per agent, a Destination.Subscribe stream
  (snapshot, then deltas; each delta's meshed pods are timed), and, once told, a
  Telemetry.Report stream with one report a second for its pods (an inbound and an outbound
  request series per pod, and the enrolled pods). No data plane.
- a churn driver writing pod changes as the lab does (temp file + rename): each tick creates a
  pod of a random Service (or deletes the oldest such pod), and rewrites that Service's
  EndpointSlice. One tick = one pod change. A change counts as delivered to an agent when that
  agent's stream carried the pod in `meshed_pods_updated` (creation) or `meshed_pods_removed`.

Phases, each `--phase-seconds` long, with the control plane's CPU measured from /proc (its
process and its children, the telemetry worker; the main process alone as `main_cores`; RSS
summed over them, VmHWM summed as an upper bound of the peak; `--telemetry-worker` picks where
the control plane runs its store, for A/B):
  idle (agents subscribed, nothing happens), telemetry (reports every second), churn
  (telemetry + churn), stat (telemetry + public API Stat calls: deploy and pod, all namespaces).
Memory per pod: RSS of the loaded control plane minus that of one started on an empty state
directory, over the pods. Memory per series: RSS growth over the telemetry phases over the
series the store holds (its own gauge). Figures are from one machine, which may be shared: the
simulated agents run on the same cores as the control plane (their CPU is reported too).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nodemesh import keymaker, tasks  # noqa: E402
from nodemesh.api import destination_pb2 as dpb  # noqa: E402
from nodemesh.api import destination_pb2_grpc as dpb_grpc  # noqa: E402
from nodemesh.api import identity_pb2 as ipb  # noqa: E402
from nodemesh.api import identity_pb2_grpc as ipb_grpc  # noqa: E402
from nodemesh.api import public_pb2 as ppb  # noqa: E402
from nodemesh.api import public_pb2_grpc as ppb_grpc  # noqa: E402
from nodemesh.api import telemetry_pb2 as tpb  # noqa: E402
from nodemesh.histogram import bucket_index  # noqa: E402
from nodemesh.identity import create_issuer_files  # noqa: E402
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access  # noqa: E402
from nodemesh.lab.store import encode  # noqa: E402

TARGETS = {
    "change_to_all_agents_p99_s": 1.0,
    "rss_bytes": 1 << 30,
    "ingest_cores": 1.0,
    "stat_pods_p99_s": 0.2,
}
TELEMETRY_METHOD = "/nodemesh.telemetry.v1.Telemetry/Report"
SERVICES_PER_NAMESPACE = 50
CHURN_PREFIX = "churn-"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    nodes: int
    pods_per_node: int
    pods_per_service: int
    churn: float
    phase_seconds: float
    workers: int
    stat_calls: int
    telemetry: bool = True  # off: no reports at all (to tell the churn's cost from ingest's)
    telemetry_worker: str = "process"  # the control plane's --telemetry-worker
    # Stat pod (all namespaces) asked every this many seconds during the churn phase (0: never),
    # to tell whether kept Stat answers, rebuilt each second while asked, delay the deltas.
    stat_during_churn: float = 0.0

    @property
    def pods(self) -> int:
        return self.nodes * self.pods_per_node

    @property
    def services(self) -> int:
        return self.pods // self.pods_per_service


# --- the cluster's objects -------------------------------------------------------------------


def app_of(s: int) -> tuple[str, str]:
    return f"ns{s // SERVICES_PER_NAMESPACE}", f"app{s}"


def identity(ns: str, app: str) -> str:
    return f"spiffe://cluster.local/ns/{ns}/sa/{app}"


def pod_ip(i: int, base: int = 10) -> str:
    return f"{base}.{128 + i // 62500}.{i // 250 % 250}.{i % 250 + 2}"


def pod_obj(ns: str, app: str, name: str, node: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "labels": {"app": app},
            "ownerReferences": [{"kind": "ReplicaSet", "name": f"{app}-rs", "controller": True}],
        },
        "spec": {"nodeName": node, "serviceAccountName": app},
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def endpoint(ns: str, name: str, node: str, ip: str) -> dict[str, Any]:
    return {
        "addresses": [ip],
        "conditions": {"ready": True},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "name": name, "namespace": ns},
    }


def slice_obj(ns: str, app: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
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


@dataclass(frozen=True)
class PodSpot:
    ns: str
    app: str
    name: str
    node: str
    ip: str
    service: int


def layout(plan: Plan) -> list[PodSpot]:
    """Pod i of the cluster: Service i // pods_per_service, node i % nodes (spread evenly)."""
    out = []
    for i in range(plan.pods):
        s = i // plan.pods_per_service
        ns, app = app_of(s)
        name = f"{app}-rs-{i % plan.pods_per_service}"
        out.append(PodSpot(ns, app, name, f"node{i % plan.nodes + 1}", pod_ip(i), s))
    return out


class StateDir:
    """Writes objects the lab's way: lab-wide resourceVersion, temp file then rename."""

    def __init__(self, root: Path) -> None:
        self.root = root / "objects"
        self.rv = 100

    def path(self, obj: dict[str, Any]) -> Path:
        meta = obj["metadata"]
        kind = obj["kind"]
        folder = self.root / kind / meta["namespace"] if "namespace" in meta else self.root / kind
        return folder / f"{meta['name']}.yaml"

    def put(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        path = self.path(obj)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.stem}.tmp"
        tmp.write_text(encode(obj))
        os.rename(tmp, path)

    def delete(self, obj: dict[str, Any]) -> None:
        self.path(obj).unlink()


def write_cluster(state: StateDir, plan: Plan, spots: list[PodSpot]) -> None:
    for n in range(1, plan.nodes + 1):
        state.put({"kind": "Node", "metadata": {"name": f"node{n}"}, "spec": {"podCIDR": ""}})
    for i in range((plan.services + SERVICES_PER_NAMESPACE - 1) // SERVICES_PER_NAMESPACE):
        state.put(
            {
                "kind": "Namespace",
                "metadata": {"name": f"ns{i}", "labels": {"nodemesh.io/mesh": "enabled"}},
            }
        )
    by_service: dict[int, list[PodSpot]] = collections.defaultdict(list)
    for spot in spots:
        by_service[spot.service].append(spot)
    for s in range(plan.services):
        ns, app = app_of(s)
        owner = {"kind": "Deployment", "name": app, "controller": True}
        state.put({"kind": "Deployment", "metadata": {"name": app, "namespace": ns}})
        state.put(
            {
                "kind": "ReplicaSet",
                "metadata": {"name": f"{app}-rs", "namespace": ns, "ownerReferences": [owner]},
            }
        )
        state.put(
            {
                "kind": "Service",
                "metadata": {"name": app, "namespace": ns},
                "spec": {
                    "clusterIP": f"10.96.{s // 250}.{s % 250 + 1}",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            }
        )
        for spot in by_service[s]:
            state.put(pod_obj(ns, app, spot.name, spot.node, spot.ip))
        state.put(slice_obj(ns, app, [endpoint(ns, p.name, p.node, p.ip) for p in by_service[s]]))


class Churn:
    """One tick: a new pod of a random Service, or, once `keep` churned pods live (a few
    seconds' worth, so each lives long enough to be seen), the oldest deleted; then that
    Service's EndpointSlice rewritten. Keeps the write time of each change."""

    def __init__(self, state: StateDir, plan: Plan, spots: list[PodSpot], seed: int = 7) -> None:
        self.state = state
        self.plan = plan
        self.rng = random.Random(seed)
        self.base: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
        for spot in spots:
            self.base[spot.service].append(endpoint(spot.ns, spot.name, spot.node, spot.ip))
        self.extra: dict[int, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.live: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self.written: dict[str, float] = {}  # "add:ns/name" | "del:ns/name" -> time.time()
        self.n = 0
        self.keep = max(5, int(plan.churn * 2))

    def tick(self) -> None:
        self.n += 1
        if len(self.live) >= self.keep:
            s, obj = self.live.popleft()
            meta = obj["metadata"]
            self.state.delete(obj)
            key = f"del:{meta['namespace']}/{meta['name']}"
            del self.extra[s][meta["name"]]
        else:
            s = self.rng.randrange(self.plan.services)
            ns, app = app_of(s)
            name = f"{CHURN_PREFIX}{self.n}"
            node = f"node{self.rng.randrange(self.plan.nodes) + 1}"
            ip = pod_ip(self.n, base=11)
            obj = pod_obj(ns, app, name, node, ip)
            self.state.put(obj)
            key = f"add:{ns}/{name}"
            self.extra[s][name] = endpoint(ns, name, node, ip)
            self.live.append((s, obj))
        self.written[key] = time.time()
        ns, app = app_of(s)
        self.state.put(slice_obj(ns, app, self.base[s] + list(self.extra[s].values())))


# --- the control plane process ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


class ControlPlane:
    def __init__(
        self, state_dir: Path, identity_dir: Path, access_dir: Path, worker: str = "process"
    ) -> None:
        self.ports = {name: free_port() for name in ("agent", "public", "admin")}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "controlplane.main", "--source=local",
                f"--state-dir={state_dir}", f"--identity-dir={identity_dir}",
                f"--access-file={access_dir / ACCESS_FILE}",
                f"--agent-addr=127.0.0.1:{self.ports['agent']}",
                f"--public-addr=127.0.0.1:{self.ports['public']}",
                f"--admin-addr=127.0.0.1:{self.ports['admin']}",
                "--drain-seconds=1", "--log-level=WARNING", f"--telemetry-worker={worker}",
            ],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"control plane exited ({self.proc.returncode}):\n{self.output()}")
            try:
                if http_get(f"http://127.0.0.1:{self.ports['admin']}/ready")[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"control plane not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def pids(self) -> list[int]:
        """The control plane's process and its children (the telemetry worker)."""
        out = [self.proc.pid]
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out

    def cpu_s(self, pid: int | None = None) -> float:
        """CPU seconds of the control plane's processes (of `pid` alone if given)."""
        total = 0.0
        for p in [pid] if pid else self.pids():
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    def status(self, key: str) -> int:
        """`key` of /proc/PID/status (VmRSS, VmHWM) summed over the control plane's processes
        (for VmHWM an upper bound: the two peaks need not coincide)."""
        total = 0
        for p in self.pids():
            try:
                lines = Path(f"/proc/{p}/status").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                if line.startswith(key + ":"):
                    total += int(line.split()[1]) * 1024
        return total

    def metric(self, name: str) -> float:
        _, text = http_get(f"http://127.0.0.1:{self.ports['admin']}/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


# --- simulated agents (worker processes) ------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    nodes: list[str]
    tokens: dict[str, str]
    pods: dict[str, list[PodSpot]]  # node -> its pods
    peer_of: dict[int, PodSpot]  # service -> a pod of the next Service (the traffic's peer)
    port: int
    anchor_pem: bytes


def peers(plan: Plan, spots: list[PodSpot]) -> dict[int, PodSpot]:
    """Each Service's traffic peer: the first pod of the next Service."""
    first: dict[int, PodSpot] = {}
    for spot in spots:
        first.setdefault(spot.service, spot)
    return {s: first[(s + 1) % plan.services] for s in range(plan.services)}


def pods_by_node(spots: list[PodSpot]) -> dict[str, list[PodSpot]]:
    by_node: dict[str, list[PodSpot]] = collections.defaultdict(list)
    for spot in spots:
        by_node[spot.node].append(spot)
    return by_node


def node_reports(plan: Plan, spots: list[PodSpot]) -> list[tpb.AgentReport]:
    """One report of each node's agent, as the simulated agents send them."""
    peer_of = peers(plan, spots)
    return [build_report(n, mine, peer_of) for n, mine in pods_by_node(spots).items()]


def build_report(node: str, spots: list[PodSpot], peer_of: dict[int, PodSpot]) -> tpb.AgentReport:
    latency = tpb.Histogram(
        buckets=[bucket_index(900), bucket_index(2100), bucket_index(7400)],
        counts=[6, 3, 1],
        sum_us=6 * 900 + 3 * 2100 + 7400,
    )
    report = tpb.AgentReport(node=node, agent_version="bench", interval_ms=1000)
    report.load.pods_enrolled = len(spots)
    for spot in spots:
        report.load.enrolled_pods.add(namespace=spot.ns, name=spot.name, uid=f"uid-{spot.name}")
        me = tpb.Peer(
            namespace=spot.ns, deployment=spot.app, pod=spot.name,
            identity=identity(spot.ns, spot.app),
        )  # fmt: skip
        other = peer_of[spot.service]
        peer = tpb.Peer(
            namespace=other.ns, deployment=other.app, pod=other.name, service=other.app,
            identity=identity(other.ns, other.app),
        )  # fmt: skip
        for direction, src, dst in ((tpb.INBOUND, peer, me), (tpb.OUTBOUND, me, peer)):
            report.requests.add(
                direction=direction, src=src, dst=dst, protocol=tpb.HTTP1, status_code=200,
                classification=tpb.SUCCESS, tls=True, responses=10, latency=latency,
            )  # fmt: skip
    return report


class Agent:
    def __init__(self, node: str, job: WorkerJob, shared: WorkerShared) -> None:
        self.node = node
        self.job = job
        self.shared = shared
        self.meta = (("authorization", f"Bearer {job.tokens[node]}"),)
        creds = grpc.ssl_channel_credentials(root_certificates=job.anchor_pem)
        # A connection of its own, as each node's agent has (gRPC would share one otherwise).
        self.channel = grpc.aio.secure_channel(
            f"localhost:{job.port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.report = build_report(node, job.pods[node], job.peer_of)

    async def certify(self) -> None:
        spot = self.job.pods[self.node][0]
        spiffe = identity(spot.ns, spot.app)
        csr = keymaker.make_csr(spiffe, self.shared.key)
        stub = ipb_grpc.IdentityStub(self.channel)
        for attempt in range(6):  # an agent retries with backoff; so does this one (counted)
            try:
                await stub.Certify(
                    ipb.CertifyRequest(csr=csr, spiffe_id=spiffe), metadata=self.meta, timeout=120
                )
                return
            except grpc.aio.AioRpcError as exc:
                if attempt == 5:
                    raise
                self.shared.retries[f"certify {exc.code().name}"] += 1
                await asyncio.sleep(0.5 * 2**attempt)

    async def subscribe(self, ready: asyncio.Event) -> None:
        stub = dpb_grpc.DestinationStub(self.channel)
        call = stub.Subscribe(
            dpb.SubscribeRequest(node=self.node, agent_version="bench"), metadata=self.meta
        )
        seen = self.shared.seen
        async for update in call:
            now = time.time()
            if update.HasField("snapshot"):
                if update.snapshot.last:
                    ready.set()
                continue
            delta = update.delta
            self.shared.deltas += 1
            for m in delta.meshed_pods_updated:
                if m.key.name.startswith(CHURN_PREFIX):
                    seen[f"add:{m.key.namespace}/{m.key.name}"].append(now)
            for k in delta.meshed_pods_removed:
                if k.name.startswith(CHURN_PREFIX):
                    seen[f"del:{k.namespace}/{k.name}"].append(now)

    async def telemetry(self) -> None:
        call = self.channel.stream_stream(
            TELEMETRY_METHOD,
            request_serializer=lambda b: b,
            response_deserializer=tpb.ReportAck.FromString,
        )(metadata=self.meta)
        sequence = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.random()  # spread the agents over the second
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += 1.0
            if not self.shared.telemetry_on.is_set():
                continue
            sequence += 1
            self.report.sequence = sequence
            self.report.timestamp_ms = int(time.time() * 1000)
            await call.write(self.report.SerializeToString())
            ack = await call.read()
            if ack is grpc.aio.EOF:
                raise RuntimeError("telemetry stream ended")
            if ack.accepted:
                self.shared.reports_accepted += 1
            else:
                self.shared.reports_refused += 1
                self.shared.refusals[ack.reason[:80]] += 1


class WorkerShared:
    def __init__(self, telemetry_on: Any) -> None:
        self.telemetry_on = telemetry_on
        self.key = keymaker.new_key()
        self.seen: dict[str, list[float]] = collections.defaultdict(list)
        self.deltas = 0
        self.reports_accepted = 0
        self.reports_refused = 0
        self.refusals: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []
        self.retries: collections.Counter[str] = collections.Counter()


async def worker_main(job: WorkerJob, ready_count: Any, telemetry_on: Any, stop: Any) -> dict:
    shared = WorkerShared(telemetry_on)
    agents = [Agent(node, job, shared) for node in job.nodes]
    cert_times: list[float] = []
    snapshot_times: list[float] = []
    running: list[asyncio.Task[None]] = []

    async def start(agent: Agent) -> None:
        t0 = time.monotonic()
        await agent.certify()
        cert_times.append(time.monotonic() - t0)
        ready = asyncio.Event()
        t1 = time.monotonic()
        running.append(tasks.spawn(agent.subscribe(ready), name=f"subscribe {agent.node}"))
        await ready.wait()
        snapshot_times.append(time.monotonic() - t1)
        running.append(tasks.spawn(agent.telemetry(), name=f"telemetry {agent.node}"))
        with ready_count.get_lock():
            ready_count.value += 1

    gate = asyncio.Semaphore(20)  # a control plane restart meets the agents at once, but in waves

    async def gated(agent: Agent) -> None:
        async with gate:
            await start(agent)

    await asyncio.gather(*(gated(a) for a in agents))
    while not stop.is_set():
        await asyncio.sleep(0.2)
        for task in running:
            if task.done() and not task.cancelled() and task.exception() is not None:
                shared.errors.append(repr(task.exception())[:200])
                running.remove(task)
                break
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    for agent in agents:
        await agent.channel.close()
    usage = os.times()
    return {
        "seen": {
            k: (len(v), min(v), max(v), sorted(v)[len(v) // 2]) for k, v in shared.seen.items()
        },
        "deltas": shared.deltas,
        "reports_accepted": shared.reports_accepted,
        "reports_refused": shared.reports_refused,
        "refusals": dict(shared.refusals),
        "errors": shared.errors[:10],
        "retries": dict(shared.retries),
        "cert_s": cert_times,
        "snapshot_s": snapshot_times,
        "cpu_s": usage.user + usage.system,
    }


def worker(job: WorkerJob, ready_count: Any, telemetry_on: Any, stop: Any, out: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = asyncio.run(worker_main(job, ready_count, telemetry_on, stop))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent, which fails the run)
        result = {"fatal": "".join(traceback.format_exception(exc))[-3000:]}
    out.put(result)


# --- the run ----------------------------------------------------------------------------------


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return v[min(len(v) - 1, max(0, int(round(p * len(v) + 0.5)) - 1))]

    return {"p50": q(0.5), "p99": q(0.99), "max": v[-1], "n": len(v)}


class Phase:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.main0 = cp.cpu_s(cp.proc.pid)
        self.t0 = time.monotonic()
        self.cpu0 = cp.cpu_s()

    def end(self) -> dict[str, float]:
        seconds = time.monotonic() - self.t0
        cpu = self.cp.cpu_s() - self.cpu0
        main = self.cp.cpu_s(self.cp.proc.pid) - self.main0
        return {"seconds": round(seconds, 2), "cpu_s": round(cpu, 3),
                "cores": round(cpu / seconds, 3), "rss_bytes": self.cp.status("VmRSS"),
                # the process serving the streams and the public API (not the worker)
                "main_cores": round(main / seconds, 3),
                "load_average_end": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def stat_calls(port: int, token: str, n: int, spacing: float) -> dict[str, Any]:
    meta = (("authorization", f"Bearer {token}"),)
    out: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ppb_grpc.PublicStub(channel)
        for kind in ("pod", "deploy"):
            took = []
            rows = requests = 0
            for _ in range(n):
                t0 = time.monotonic()
                answer = stub.Stat(
                    ppb.StatRequest(resource=ppb.Resource(kind=kind), all_namespaces=True),
                    metadata=meta, timeout=60,
                )  # fmt: skip
                took.append(time.monotonic() - t0)
                rows = len(answer.rows)
                requests = sum(r.requests for r in answer.rows)
                time.sleep(spacing)
            # The first call of a kind: built while it waits, unless kept built ahead (pod and
            # deploy over every namespace, for the first minutes after the control plane's
            # start: controlplane.public_api.build_ahead); the rest may get a kept answer.
            out[kind] = {
                "latency_s": quantiles(took),
                "first_s": took[0],
                "after_first_s": quantiles(took[1:]),
                "calls_s": [round(t, 4) for t in took],
                "rows": rows,
                "requests": requests,
            }
    return out


def poll_stat(port: int, token: str, every: float, done: threading.Event) -> None:
    """Stat pod over all namespaces every `every` seconds until `done` (the answers unused)."""
    meta = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ppb_grpc.PublicStub(channel)
        while not done.wait(every):
            stub.Stat(
                ppb.StatRequest(resource=ppb.Resource(kind="pod"), all_namespaces=True),
                metadata=meta, timeout=60,
            )  # fmt: skip


def run(plan: Plan, out_dir: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="nm-cpscale-"))
    spots = layout(plan)
    nodes = [f"node{n}" for n in range(1, plan.nodes + 1)]
    issuer = create_issuer_files(work / "identity", nodes=nodes)
    create_lab_access(work / "access")
    admin_token = (work / "access" / ADMIN_TOKEN_FILE).read_text().strip()

    # The empty control plane's RSS, for memory per pod.
    (work / "empty" / "objects").mkdir(parents=True)
    empty = ControlPlane(work / "empty", work / "identity", work / "access", plan.telemetry_worker)
    try:
        empty.wait_ready(60)
        time.sleep(1)
        rss_empty = empty.status("VmRSS")
    finally:
        empty.stop()

    t0 = time.monotonic()
    state = StateDir(work / "lab")
    write_cluster(state, plan, spots)
    write_s = time.monotonic() - t0
    cp = ControlPlane(work / "lab", work / "identity", work / "access", plan.telemetry_worker)
    workers: list[mp.Process] = []
    result: dict[str, Any] = {"kind": "controlplane-scale", "plan": plan.__dict__}
    stop = mp.Event()
    try:
        ready_s = cp.wait_ready(600)
        time.sleep(1)
        rss_loaded = cp.status("VmRSS")
        by_node = pods_by_node(spots)
        peer_of = peers(plan, spots)
        ctx = mp.get_context("spawn")
        ready_count = ctx.Value("i", 0)
        telemetry_on = ctx.Event()
        stop = ctx.Event()
        results_q = ctx.Queue()
        for w in range(plan.workers):
            mine = nodes[w :: plan.workers]
            job = WorkerJob(
                nodes=mine,
                tokens={n: issuer.tokens[n] for n in mine},
                pods={n: by_node[n] for n in mine},
                peer_of=peer_of,
                port=cp.ports["agent"],
                anchor_pem=issuer.anchor.certificate_pem(),
            )
            p = ctx.Process(target=worker, args=(job, ready_count, telemetry_on, stop, results_q))
            p.start()
            workers.append(p)

        t0 = time.monotonic()
        phase = Phase(cp)
        while ready_count.value < plan.nodes:
            if any(not p.is_alive() for p in workers):
                got = results_q.get(timeout=5)
                raise SystemExit(f"a simulated agent worker died:\n{got}\n{cp.output()}")
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"only {ready_count.value}/{plan.nodes} agents subscribed")
            time.sleep(0.1)
        connect = phase.end()
        connect["all_subscribed_s"] = round(time.monotonic() - t0, 2)
        rss_subscribed = cp.status("VmRSS")

        phases: dict[str, Any] = {"connect": connect}
        time.sleep(1)
        phase = Phase(cp)
        time.sleep(plan.phase_seconds)
        phases["idle"] = phase.end()

        if plan.telemetry:
            telemetry_on.set()
        time.sleep(2)  # every agent has sent once; the store has its series
        phase = Phase(cp)
        time.sleep(plan.phase_seconds)
        phases["telemetry"] = phase.end()
        series = cp.metric("nodemesh_telemetry_series")
        cells = cp.metric("nodemesh_telemetry_cells")
        rss_telemetry = cp.status("VmRSS")

        churn = Churn(state, plan, spots)
        polling = threading.Event()
        poller = None
        if plan.stat_during_churn > 0:
            poller = threading.Thread(
                target=poll_stat,
                args=(cp.ports["public"], admin_token, plan.stat_during_churn, polling),
                daemon=True,
            )
            poller.start()
        phase = Phase(cp)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < plan.phase_seconds:
            due = int(elapsed * plan.churn) + 1
            while churn.n < due:
                churn.tick()
            time.sleep(max(0.0, (churn.n / plan.churn) - (time.monotonic() - started)))
        phases["churn"] = phase.end()
        polling.set()
        if poller is not None:
            poller.join(70)
        phases["churn"]["changes"] = churn.n
        phases["churn"]["changes_per_s"] = round(churn.n / phases["churn"]["seconds"], 1)

        phase = Phase(cp)
        stats = stat_calls(
            cp.ports["public"], admin_token, plan.stat_calls, spacing=plan.phase_seconds / 40
        )
        phases["stat"] = phase.end()
        time.sleep(3)  # late deliveries of the last changes
        series_end = cp.metric("nodemesh_telemetry_series")
        evicted = cp.metric("nodemesh_telemetry_series_evicted_total")
        merged = cp.metric("nodemesh_destination_deltas_merged_total")
        rss_peak = cp.status("VmHWM")
        stop.set()
        collected = [results_q.get(timeout=120) for _ in workers]
        for r in collected:
            if "fatal" in r:
                raise SystemExit(f"a simulated agent worker failed: {r['fatal']}\n{cp.output()}")
    finally:
        stop.set()
        for p in workers:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
        cp_cpu_total = cp.cpu_s() if cp.proc.poll() is None else None
        cp.stop()
        shutil.rmtree(work, ignore_errors=True)

    # Per change: how many agents saw it, and when the last one did.
    reached: dict[str, list[float]] = {}
    for r in collected:
        for key, (count, first, last, _median) in r["seen"].items():
            cur = reached.setdefault(key, [0, first, last])
            cur[0] += count
            cur[1] = min(cur[1], first)
            cur[2] = max(cur[2], last)
    to_all, to_first, incomplete = [], [], []
    for key, written in churn.written.items():
        got = reached.get(key)
        if got is None or got[0] < plan.nodes:
            incomplete.append((key, got[0] if got else 0))
            continue
        to_all.append(got[2] - written)
        to_first.append(got[1] - written)
    reports_ok = sum(r["reports_accepted"] for r in collected)
    churn_p, tele_p = phases["churn"], phases["telemetry"]
    # The main process's CPU per pod change (what the churn adds to telemetry alone): the
    # figure a shared machine's load moves least.
    main_ms_per_change = round(
        1000 * (churn_p["main_cores"] - tele_p["main_cores"]) / churn_p["changes_per_s"], 2
    )
    ingest_cores = phases["telemetry"]["cores"] - phases["idle"]["cores"]
    measured = {
        "change_to_all_agents_s": quantiles(to_all),
        "change_to_first_agent_s": quantiles(to_first),
        "changes_written": len(churn.written),
        "changes_incomplete": len(incomplete),
        "incomplete_examples": incomplete[:5],
        "agents": plan.nodes,
        "deltas_received": sum(r["deltas"] for r in collected),
        # Deltas the control plane merged into a later one for a stream behind (not sent alone).
        "deltas_merged": int(merged),
        "startup": {
            "objects_written_s": round(write_s, 2),
            "ready_s": round(ready_s, 2),
            "certify_s": quantiles([x for r in collected for x in r["cert_s"]]),
            "snapshot_s": quantiles([x for r in collected for x in r["snapshot_s"]]),
        },
        "phases": phases,
        "ingest_cores": round(ingest_cores, 3),
        "churn_main_cpu_ms_per_change": main_ms_per_change,
        "reports_accepted": reports_ok,
        "reports_refused": sum(r["reports_refused"] for r in collected),
        "refusals": {k: v for r in collected for k, v in r["refusals"].items()},
        "agent_errors": [e for r in collected for e in r["errors"]],
        "agent_retries": dict(
            sum((collections.Counter(r["retries"]) for r in collected), collections.Counter())
        ),
        "stat": stats,
        "memory": {
            "rss_empty_bytes": rss_empty,
            "rss_loaded_bytes": rss_loaded,
            "rss_subscribed_bytes": rss_subscribed,
            "rss_telemetry_bytes": rss_telemetry,
            "rss_peak_bytes": rss_peak,
            "per_pod_bytes": round((rss_loaded - rss_empty) / plan.pods),
            "per_agent_stream_bytes": round((rss_subscribed - rss_loaded) / plan.nodes),
            "series": series,
            "series_at_end": series_end,
            "cells": cells,
            "series_evicted": evicted,
            "per_series_bytes": round((rss_telemetry - rss_subscribed) / series)
            if series
            else None,
        },
        "controlplane_cpu_s_total": cp_cpu_total,
        "agents_cpu_s_total": round(sum(r["cpu_s"] for r in collected), 1),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    result.update(measured)
    result["targets"] = targets(result)
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_results(result, out_dir)
    return result


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    def row(name: str, value: float | None, limit: float, unit: str) -> dict[str, Any]:
        met = value is not None and value < limit
        return {"target": name, "value": value, "limit": limit, "unit": unit, "met": met}

    p99 = r["change_to_all_agents_s"]["p99"]
    if r["changes_incomplete"]:
        p99 = None  # a change some agent never saw has no finite time
    return [
        row(f"pod change -> all {r['agents']} agents, p99", p99,
            TARGETS["change_to_all_agents_p99_s"], "s"),
        row("control-plane RSS (peak)", r["memory"]["rss_peak_bytes"], TARGETS["rss_bytes"],
            "bytes"),
        row("telemetry ingest CPU", r["ingest_cores"], TARGETS["ingest_cores"], "cores"),
        row(f"Stat p99 over {r['plan']['nodes'] * r['plan']['pods_per_node']} pods",
            r["stat"]["pod"]["latency_s"]["p99"], TARGETS["stat_pods_p99_s"], "s"),
    ]  # fmt: skip


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} {unit}"


def markdown(r: dict[str, Any]) -> str:
    p = r["plan"]
    m = r["memory"]
    lines = [
        "# nodemesh control plane at scale",
        "",
        f"{r['when']}: {p['nodes']} simulated agents x {p['pods_per_node']} pods "
        f"({p['nodes'] * p['pods_per_node']} pods, {r['plan_services']} Services), churn "
        f"{p['churn']}/s, a telemetry report per agent per second, phases of "
        f"{p['phase_seconds']} s; {r['cpus']} CPUs, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in r['load_average'])}.",
        "",
        "| target | measured | limit | |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        lines.append(
            f"| {t['target']} | {fmt(t['value'], t['unit'])} | {fmt(t['limit'], t['unit'])} "
            f"| {'met' if t['met'] else 'MISSED'} |"
        )
    ch, ph = r["change_to_all_agents_s"], r["phases"]
    lines += [
        "",
        f"- pod change -> all agents: p50 {fmt(ch['p50'], 's')}, p99 {fmt(ch['p99'], 's')}, max "
        f"{fmt(ch['max'], 's')} over {r['changes_written']} changes "
        f"({r['changes_incomplete']} not seen by every agent); to the first agent p50 "
        f"{fmt(r['change_to_first_agent_s']['p50'], 's')} (includes the local source's 0.2 s poll)"
        + (
            f"; Stat pod asked every {p['stat_during_churn']} s meanwhile"
            if p.get("stat_during_churn")
            else ""
        ),
        f"- main process CPU per pod change (churn phase minus telemetry phase): "
        f"{r.get('churn_main_cpu_ms_per_change')} ms; deltas received by the agents "
        f"{r['deltas_received']}, merged into a later one for a stream behind "
        f"{r.get('deltas_merged', 'n/a')}",
        f"- control-plane CPU: idle {ph['idle']['cores']:.2f} cores, with telemetry "
        f"{ph['telemetry']['cores']:.2f} (ingest {r['ingest_cores']:.2f}), with telemetry + churn "
        f"{ph['churn']['cores']:.2f}, with telemetry + Stat calls {ph['stat']['cores']:.2f}; "
        f"connecting all agents took {ph['connect']['all_subscribed_s']} s "
        f"({ph['connect']['cores']:.2f} cores); telemetry worker: "
        f"{p.get('telemetry_worker', 'inline')}, the main process alone (streams, public API) "
        f"with telemetry {ph['telemetry'].get('main_cores', 0):.2f}, with churn "
        f"{ph['churn'].get('main_cores', 0):.2f}, with Stat {ph['stat'].get('main_cores', 0):.2f}",
        f"- RSS: empty {fmt(m['rss_empty_bytes'], 'bytes')}, loaded "
        f"{fmt(m['rss_loaded_bytes'], 'bytes')}, "
        f"agents subscribed {fmt(m['rss_subscribed_bytes'], 'bytes')}, with telemetry "
        f"{fmt(m['rss_telemetry_bytes'], 'bytes')}, peak {fmt(m['rss_peak_bytes'], 'bytes')}",
        f"- memory per pod {m['per_pod_bytes'] / 1024:.1f} KiB (index + everything derived from "
        f"it), per agent stream {m['per_agent_stream_bytes'] / 1024:.1f} KiB, per series "
        f"{(m['per_series_bytes'] or 0) / 1024:.2f} KiB ({m['series']:.0f} series, "
        f"{m['cells']:.0f} cells; {m['series_evicted']:.0f} evicted)",
        f"- Stat pod (all namespaces, {r['stat']['pod']['rows']} rows): p50 "
        f"{fmt(r['stat']['pod']['latency_s']['p50'], 's')}, p99 "
        f"{fmt(r['stat']['pod']['latency_s']['p99'], 's')}; Stat deploy "
        f"({r['stat']['deploy']['rows']} rows): p50 "
        f"{fmt(r['stat']['deploy']['latency_s']['p50'], 's')}, "
        f"p99 {fmt(r['stat']['deploy']['latency_s']['p99'], 's')}; the first call of each "
        "(found built ahead in the first minutes after start, else built while it waits): "
        f"pod {fmt(r['stat']['pod'].get('first_s'), 's')}, deploy "
        f"{fmt(r['stat']['deploy'].get('first_s'), 's')}; the other calls' p99: pod "
        f"{fmt(r['stat']['pod'].get('after_first_s', {}).get('p99'), 's')}, deploy "
        f"{fmt(r['stat']['deploy'].get('after_first_s', {}).get('p99'), 's')}",
        f"- startup: objects written in {r['startup']['objects_written_s']} s, ready after "
        f"{r['startup']['ready_s']} s; Certify p50 {fmt(r['startup']['certify_s']['p50'], 's')}, "
        f"snapshot p50 {fmt(r['startup']['snapshot_s']['p50'], 's')} p99 "
        f"{fmt(r['startup']['snapshot_s']['p99'], 's')}",
        f"- reports accepted {r['reports_accepted']}, refused {r['reports_refused']}; simulated "
        f"agents used {r['agents_cpu_s_total']} CPU-s on the same machine",
    ]
    return "\n".join(lines) + "\n"


def write_results(r: dict[str, Any], out_dir: Path) -> None:
    r["plan_services"] = (
        r["plan"]["nodes"] * r["plan"]["pods_per_node"] // r["plan"]["pods_per_service"]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"controlplane-scale-{r['plan']['nodes']}x{r['plan']['pods_per_node']}-{stamp}"
    (out_dir / f"{name}.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    (out_dir / f"{name}.md").write_text(markdown(r))
    (out_dir / "controlplane-scale-latest.json").write_text(
        json.dumps(r, indent=1, default=str) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods-per-node", type=int, default=20)
    ap.add_argument("--pods-per-service", type=int, default=10)
    ap.add_argument("--churn", type=float, default=50.0, help="pod changes per second")
    ap.add_argument("--phase-seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=4, help="processes running simulated agents")
    ap.add_argument("--stat-calls", type=int, default=20, help="per kind (pod, deploy)")
    ap.add_argument(
        "--no-telemetry",
        action="store_true",
        help="agents send no reports (the churn and Stat without ingest)",
    )
    ap.add_argument(
        "--telemetry-worker",
        choices=("process", "thread", "inline"),
        default="process",
        help="the control plane's --telemetry-worker (where reports and the store are handled)",
    )
    ap.add_argument(
        "--stat-during-churn", type=float, default=0.0, metavar="SECONDS",
        help="ask Stat pod (all namespaces) every SECONDS during the churn phase (A/B: does "
        "the kept answers' rebuild delay the deltas?); 0: not",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    a = ap.parse_args(argv)
    for name in ("nodes", "pods_per_node", "pods_per_service", "workers", "stat_calls"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.nodes * a.pods_per_node % a.pods_per_service:
        ap.error("--nodes x --pods-per-node must be a multiple of --pods-per-service")
    if a.churn <= 0 or a.phase_seconds <= 0:
        ap.error("--churn and --phase-seconds must be positive")
    plan = Plan(
        nodes=a.nodes, pods_per_node=a.pods_per_node, pods_per_service=a.pods_per_service,
        churn=a.churn, phase_seconds=a.phase_seconds, workers=min(a.workers, a.nodes),
        stat_calls=a.stat_calls, telemetry=not a.no_telemetry,
        telemetry_worker=a.telemetry_worker, stat_during_churn=a.stat_during_churn,
    )  # fmt: skip
    result = run(plan, a.out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
