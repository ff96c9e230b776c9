"""A small emojivoto cluster for the CLI tests: Kubernetes objects for the control plane's index
and agent reports for its telemetry store, as the lab and the agents produce them."""

from __future__ import annotations

import itertools
from typing import Any

from controlplane.telemetry import TelemetryStore, parse_report
from nodemesh.api import telemetry_pb2 as tpb
from nodemesh.histogram import LatencyHistogram

Obj = dict[str, Any]
NS = "emojivoto"
_uid = itertools.count(1)
APPS = {  # deployment: (node, pod ip, service, service ip)
    "web": ("node1", "10.244.1.10", "web-svc", "10.96.0.10"),
    "emoji": ("node2", "10.244.2.11", "emoji-svc", "10.96.0.11"),
    "voting": ("node2", "10.244.2.12", "voting-svc", "10.96.0.12"),
    "vote-bot": ("node1", "10.244.1.13", None, None),
}


def _meta(name: str, ns: str | None = None, **extra: Any) -> Obj:
    m: Obj = {"name": name, "uid": f"uid-{name}-{next(_uid)}", "resourceVersion": "1"}
    if ns:
        m["namespace"] = ns
    m.update(extra)
    return m


def objects() -> list[Obj]:
    out: list[Obj] = []
    for ns, meshed in ((NS, True), ("default", False)):
        labels = {"nodemesh.io/mesh": "enabled"} if meshed else {}
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns, labels=labels)})
    for n in (1, 2):
        out.append({
            "apiVersion": "v1", "kind": "Node", "metadata": _meta(f"node{n}"),
            "spec": {"podCIDR": f"10.244.{n}.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": f"172.18.0.{n}"}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip
    for app, (node, ip, svc, vip) in APPS.items():
        rs = f"{app}-6c9f8"
        out.append({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(app, NS),
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}},
                                  "spec": {"serviceAccountName": app}}},
        })  # fmt: skip
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": app, "uid": f"d-{app}",
                 "controller": True}  # fmt: skip
        out.append({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": _meta(rs, NS, ownerReferences=[owner]), "spec": {"replicas": 1}})  # fmt: skip
        pod = f"{rs}-0"
        rs_owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": f"r-{app}",
                    "controller": True}  # fmt: skip
        out.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": _meta(pod, NS, labels={"app": app}, ownerReferences=[rs_owner]),
            "spec": {"nodeName": node, "serviceAccountName": app, "containers": [{"name": app}]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": "172.18.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip
        if svc:
            out.append({
                "apiVersion": "v1", "kind": "Service", "metadata": _meta(svc, NS),
                "spec": {"clusterIP": vip, "clusterIPs": [vip], "selector": {"app": app},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                    "protocol": "TCP"}]},
            })  # fmt: skip
            out.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": _meta(f"{svc}-abcde", NS, labels={"kubernetes.io/service-name": svc}),
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node,
                               "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            })  # fmt: skip
    # An unmeshed pod of its own in default, to show 0/1.
    out.append({
        "apiVersion": "v1", "kind": "Pod", "metadata": _meta("debug", "default"),
        "spec": {"nodeName": "node2", "containers": [{"name": "sh"}]},
        "status": {"phase": "Running", "podIP": "10.244.2.20", "hostIP": "172.18.0.2",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })  # fmt: skip
    return out


def peer(app: str, *, service: bool = False) -> tpb.Peer:
    svc = APPS[app][2] if service else ""
    return tpb.Peer(namespace=NS, deployment=app, pod=f"{app}-6c9f8-0", service=svc or "",
                    identity=f"spiffe://cluster.local/ns/{NS}/sa/{app}")  # fmt: skip


def _series(direction: int, src: str, dst: str, latencies_us: list[int], *, ok: bool,
            protocol: int = tpb.HTTP1, status: int = 200) -> tpb.RequestSeries:  # fmt: skip
    hist = LatencyHistogram()
    for us in latencies_us:
        hist.record(us)
    buckets, counts = hist.to_sparse()
    return tpb.RequestSeries(
        direction=direction, src=peer(src), dst=peer(dst, service=True), protocol=protocol,
        status_code=status, classification=tpb.SUCCESS if ok else tpb.FAILURE, tls=True,
        responses=len(latencies_us),
        latency=tpb.Histogram(buckets=buckets, counts=counts, sum_us=hist.sum_us),
    )  # fmt: skip


def enrolled(node: str) -> list[tpb.EnrolledPod]:
    """The meshed pods of `node` (the agent knows their uids; the names suffice here)."""
    return [tpb.EnrolledPod(namespace=NS, name=f"{app}-6c9f8-0")
            for app, (where, *_) in APPS.items() if where == node]  # fmt: skip


def send_traffic(store: TelemetryStore, *, seconds: int = 10) -> None:
    """`seconds` one-second reports per node: vote-bot -> web 10 rps (1 in 10 fails),
    web -> emoji 10 rps, web -> voting 5 rps, seen inbound and outbound by the agents."""
    for second in range(seconds):
        for node in ("node1", "node2"):
            report = tpb.AgentReport(
                node=node, agent_version="0.1.0", sequence=second + 1, interval_ms=1000,
                load=tpb.AgentLoad(pods_enrolled=2, open_connections=3 if node == "node1" else 2,
                                   cpu_seconds=1.5 + second * 0.01, rss_bytes=48 * 2**20,
                                   enrolled_pods=enrolled(node)),
            )  # fmt: skip
            if node == "node1":
                # web (node1) serves vote-bot; web's calls out to emoji/voting leave from node1.
                report.requests.extend([
                    _series(tpb.INBOUND, "vote-bot", "web", [2000] * 9, ok=True),
                    _series(tpb.INBOUND, "vote-bot", "web", [9000], ok=False, status=500),
                    _series(tpb.OUTBOUND, "vote-bot", "web", [2500] * 9, ok=True),
                    _series(tpb.OUTBOUND, "vote-bot", "web", [9500], ok=False, status=500),
                    _series(tpb.OUTBOUND, "web", "emoji", [1000] * 10, ok=True, protocol=tpb.GRPC),
                    _series(tpb.OUTBOUND, "web", "voting", [1500] * 5, ok=True, protocol=tpb.GRPC),
                ])  # fmt: skip
                report.tcp.append(tpb.TcpSeries(
                    direction=tpb.INBOUND, src=peer("vote-bot"), dst=peer("web", service=True),
                    tls=True, opened=1 if second == 0 else 0, read_bytes=1200, write_bytes=5400,
                    open_connections=1,
                ))  # fmt: skip
            else:
                report.requests.extend([
                    _series(tpb.INBOUND, "web", "emoji", [800] * 10, ok=True, protocol=tpb.GRPC),
                    _series(tpb.INBOUND, "web", "voting", [1200] * 5, ok=True, protocol=tpb.GRPC),
                ])  # fmt: skip
            store.ingest(parse_report(report, encoded_size=report.ByteSize()))
