"""Destination tables for the data-plane tests, built through the real snapshot codec."""

from __future__ import annotations

from nodeagent.upstream.table import DestinationTable
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb
from nodemesh.model import (
    Endpoint,
    EndpointPort,
    InboundMode,
    MeshSettings,
    PodInfo,
    PodKey,
    PortSet,
    Service,
    ServiceKey,
    ServicePort,
    WorkloadRef,
)

TD = "cluster.local"


def endpoint(
    ip: str,
    port: int,
    *,
    name: str = "http",
    ready: bool = True,
    meshed: bool = True,
    pod: str = "",
) -> Endpoint:
    pod = pod or f"api-{ip.rsplit('.', 1)[1]}-{port}"
    return Endpoint(
        ip=ip,
        ports=(EndpointPort(name, port),),
        ready=ready,
        node="node2",
        pod=PodKey("shop", pod),
        workload=WorkloadRef("Deployment", "shop", "api"),
        identity=f"spiffe://{TD}/ns/shop/sa/api" if meshed else "",
        meshed=meshed,
    )


def service(
    name: str, vip: str, port: int, endpoints: list[Endpoint], *, opaque: str = ""
) -> Service:
    return Service(
        key=ServiceKey("shop", name),
        cluster_ips=(vip,) if vip else (),
        ports=(ServicePort("http", port, "http"),),
        endpoints=tuple(endpoints),
        opaque_ports=PortSet.parse(opaque),
    )


def pod(
    name: str, ip: str, *, sa: str = "web", mode: InboundMode = InboundMode.PERMISSIVE
) -> PodInfo:
    return PodInfo(
        key=PodKey("shop", name),
        uid=f"uid-{name}",
        node="node1",
        ip=ip,
        host_ip="172.18.0.1",
        phase="Running",
        ready=True,
        service_account=sa,
        identity=f"spiffe://{TD}/ns/shop/sa/{sa}",
        workload=WorkloadRef("Deployment", "shop", sa),
        mesh=MeshSettings(meshed=True, inbound_mode=mode),
    )


def table(services: list[Service], pods: list[PodInfo] = ()) -> DestinationTable:  # type: ignore[assignment]
    t = DestinationTable("node1")
    snap = pb.Snapshot(
        services=[codec.service_to_pb(s) for s in services],
        pods=[codec.pod_to_pb(p) for p in pods],
        last=True,
    )
    t.apply(pb.Update(revision=1, snapshot=snap))
    return t
