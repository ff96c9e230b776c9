"""A small emojivoto-shaped cluster for the dashboard tests: a real ClusterIndex fed with
Kubernetes objects, a real TelemetryStore fed with agent reports, and a settable clock."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from controlplane.index import ClusterIndex
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.telemetry import TelemetryStore, parse_report
from nodemesh.api import telemetry_pb2 as tpb
from nodemesh.histogram import LatencyHistogram

NS = "emojivoto"
TD = "cluster.local"
_uids = itertools.count(1)


def _meta(name: str, ns: str | None = None, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "uid": f"uid-{next(_uids)}", "resourceVersion": "1"}
    if ns:
        m["namespace"] = ns
    m.update({k: v for k, v in extra.items() if v is not None})
    return m


def _owner(kind: str, name: str) -> dict[str, Any]:
    api = "apps/v1"
    return {"apiVersion": api, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True}


def objects() -> list[dict[str, Any]]:
    """Namespaces emojivoto (meshed) and plain (not), two nodes, four Deployments with one pod
    each (web's pods on both nodes), and `web-api`, whose pods must not count as web's."""
    out: list[dict[str, Any]] = [
        {"kind": "Namespace", "metadata": _meta(NS, labels={"nodemesh.io/mesh": "enabled"})},
        {"kind": "Namespace", "metadata": _meta("plain", labels={})},
    ]
    for n in (1, 2):
        out.append(
            {
                "kind": "Node",
                "metadata": _meta(f"node{n}"),
                "spec": {"podCIDR": f"10.244.{n}.0/24"},
                "status": {
                    "addresses": [{"type": "InternalIP", "address": f"172.18.0.{n}"}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    ip = itertools.count(10)
    for name, replicas in (
        ("web", 2),
        ("emoji", 1),
        ("voting", 1),
        ("vote-bot", 1),
        ("web-api", 1),
    ):
        rs = f"{name}-5d8f7"
        out.append(
            {
                "kind": "Deployment",
                "metadata": _meta(name, NS),
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"serviceAccountName": name},
                    },
                },
            }
        )
        out.append(
            {
                "kind": "ReplicaSet",
                "metadata": _meta(rs, NS, ownerReferences=[_owner("Deployment", name)]),
                "spec": {"replicas": replicas},
            }
        )
        for i in range(replicas):
            node = f"node{i % 2 + 1}"
            out.append(
                {
                    "kind": "Pod",
                    "metadata": _meta(
                        f"{rs}-p{i}xyz",
                        NS,
                        labels={"app": name},
                        ownerReferences=[_owner("ReplicaSet", rs)],
                    ),
                    "spec": {"nodeName": node, "serviceAccountName": name, "containers": [{}]},
                    "status": {
                        "phase": "Running",
                        "podIP": f"10.244.{i % 2 + 1}.{next(ip)}",
                        "hostIP": f"172.18.0.{i % 2 + 1}",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                }
            )
    return out


def build_index() -> ClusterIndex:
    idx = ClusterIndex()
    for obj in objects():
        idx.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    return idx


def peer(name: str, *, pod: str = "", svc: str = "") -> tpb.Peer:
    return tpb.Peer(
        namespace=NS,
        deployment=name,
        pod=pod or f"{name}-5d8f7-p0xyz",
        service=svc,
        identity=f"spiffe://{TD}/ns/{NS}/sa/{name}",
    )


@dataclass
class Clock:
    now: float = 1_000_000.0  # on a bucket boundary

    def __call__(self) -> float:
        return self.now


@dataclass
class Traffic:
    """Agent-like reports into a store: calls between Deployments, both sides reported."""

    store: TelemetryStore
    sequence: int = 0

    def calls(
        self,
        src: str,
        dst: str,
        *,
        ok: int,
        failed: int = 0,
        latency_us: int = 2000,
        node: str = "node1",
        tls: bool = True,
        server_knows_pod_only: bool = False,
        denied_by: str = "",
    ) -> None:
        """`ok`/`failed` calls reported by the client's agent (outbound) and the server's
        (inbound); `server_knows_pod_only`: the server side names the client by pod alone."""
        self.sequence += 1
        report = tpb.AgentReport(
            node=node,
            agent_version="0.1.0",
            sequence=self.sequence,
            interval_ms=1000,
            load=tpb.AgentLoad(
                pods_enrolled=3, open_connections=4, cpu_seconds=0.5, rss_bytes=30_000_000
            ),
        )
        for direction in (tpb.OUTBOUND, tpb.INBOUND):
            for count, success in ((ok, True), (failed, False)):
                if not count:
                    continue
                hist = LatencyHistogram()
                for _ in range(count):
                    hist.record(latency_us)
                buckets, counts = hist.to_sparse()
                report.requests.append(
                    tpb.RequestSeries(
                        direction=direction,
                        src=(
                            tpb.Peer(namespace=NS, pod=f"{src}-5d8f7-p0xyz")
                            if server_knows_pod_only and direction == tpb.INBOUND
                            else peer(src)
                        ),
                        dst=peer(dst, svc=f"{dst}-svc"),
                        protocol=tpb.GRPC,
                        status_code=200,
                        classification=tpb.SUCCESS if success else tpb.FAILURE,
                        tls=tls,
                        responses=count,
                        latency=tpb.Histogram(buckets=buckets, counts=counts, sum_us=hist.sum_us),
                    )
                )
        if denied_by:  # `failed` more calls the server's agent denied (PERMISSION_DENIED)
            report.requests.append(
                tpb.RequestSeries(
                    direction=tpb.INBOUND, src=peer(src), dst=peer(dst, svc=f"{dst}-svc"),
                    protocol=tpb.GRPC, status_code=200, grpc_status=7,
                    classification=tpb.FAILURE, tls=tls, responses=failed, authz_deny=denied_by,
                )
            )  # fmt: skip
        self.store.ingest(parse_report(report, encoded_size=report.ByteSize()))


def route_objects() -> list[dict[str, Any]]:
    """web-svc (web's first pod, node1, 10.244.1.10) and an HTTPRoute with two rules on it."""
    pod = "web-5d8f7-p0xyz"
    return [
        {
            "kind": "Service",
            "metadata": _meta("web-svc", NS),
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
        {
            "kind": "EndpointSlice",
            "metadata": _meta("web-svc-x1", NS, labels={"kubernetes.io/service-name": "web-svc"}),
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.10"], "conditions": {"ready": True},
                           "nodeName": "node1",
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": _meta("web-api", NS),
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web-svc", "port": 80}],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                     "backendRefs": [{"name": "web-svc", "port": 80}]},
                    {"backendRefs": [{"name": "web-svc", "port": 80}]},
                ],
            },
        },
    ]  # fmt: skip


def add_routes(index: ClusterIndex) -> None:
    for obj in route_objects():
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))


def routed(
    store: TelemetryStore, *, route: str, ok: int, failed: int = 0, sequence: int = 1000
) -> None:
    """What vote-bot's agent reports for requests its L7 path sent to web-svc by `route`."""
    report = tpb.AgentReport(node="node1", agent_version="0.1.0", sequence=sequence,
                             interval_ms=1000, load=tpb.AgentLoad(pods_enrolled=3))  # fmt: skip
    for count, success, status in ((ok, True, 200), (failed, False, 503)):
        if not count:
            continue
        hist = LatencyHistogram()
        for _ in range(count):
            hist.record(4000)
        buckets, counts = hist.to_sparse()
        report.requests.append(
            tpb.RequestSeries(
                direction=tpb.OUTBOUND, src=peer("vote-bot"),
                dst=tpb.Peer(namespace=NS, service="web-svc"), protocol=tpb.HTTP1,
                status_code=status, classification=tpb.SUCCESS if success else tpb.FAILURE,
                tls=True, responses=count, route=route,
                latency=tpb.Histogram(buckets=buckets, counts=counts, sum_us=hist.sum_us),
            )
        )  # fmt: skip
    store.ingest(parse_report(report, encoded_size=report.ByteSize()))
