"""Events, peers and a destination table for the observation tests (shared helpers)."""

from __future__ import annotations

from nodeagent.observe.events import Peer, RequestObserved, TcpClosed, TcpOpened
from nodeagent.upstream.table import DestinationTable
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as dpb
from nodemesh.model import (
    Endpoint,
    EndpointPort,
    PodKey,
    Service,
    ServiceKey,
    ServicePort,
    WorkloadRef,
)

WEB_ID = "spiffe://cluster.local/ns/emojivoto/sa/web"
EMOJI_ID = "spiffe://cluster.local/ns/emojivoto/sa/emoji"


def web(i: int = 0, ip: str | None = None) -> Peer:
    return Peer(
        ip or f"10.244.1.{10 + i}", "emojivoto", f"web-{i}", "Deployment", "web", "", WEB_ID
    )


def emoji(i: int = 0) -> Peer:
    return Peer(
        f"10.244.2.{10 + i}",
        "emojivoto",
        f"emoji-{i}",
        "Deployment",
        "emoji",
        "emoji-svc",
        EMOJI_ID,
    )


def outsider(ip: str) -> Peer:
    return Peer(ip)


_ids = iter(range(1, 1 << 62))


def request(
    src: Peer,
    dst: Peer,
    *,
    direction: str = "outbound",
    latency_s: float = 0.002,
    first_byte_s: float | None = None,
    status: int | None = 200,
    grpc_status: int | None = None,
    protocol: str = "http1",
    tls: bool = True,
    method: str = "GET",
    path: str = "/api/list",
    authority: str = "emoji-svc.emojivoto:8080",
    req_id: int | None = None,
    started_at: float = 1_700_000_000.0,
) -> RequestObserved:
    failed = status is None or status >= 500 or grpc_status not in (None, 0)
    return RequestObserved(
        req_id=req_id if req_id is not None else next(_ids),
        conn_id=1,
        direction=direction,
        src=src,
        dst=dst,
        protocol=protocol,
        tls=tls,
        method=method,
        authority=authority,
        path=path,
        status=status,
        grpc_status=grpc_status,
        classification="failure" if failed else "success",
        reset=status is None,
        latency_first_byte_s=first_byte_s,
        latency_s=latency_s,
        request_bytes=10,
        response_bytes=100,
        started_at=started_at,
    )


def opened(conn_id: int, src: Peer, dst: Peer, direction: str = "outbound") -> TcpOpened:
    return TcpOpened(conn_id, direction, src, dst, "http1", True, 0.0)


def closed(
    conn_id: int, src: Peer, dst: Peer, read: int, write: int, direction: str = "outbound"
) -> TcpClosed:
    return TcpClosed(conn_id, direction, src, dst, "http1", True, read, write, 0.5)


def service(
    ns: str, name: str, cluster_ips: tuple[str, ...], endpoints: list[tuple[str, str, bool]]
) -> Service:
    """endpoints: (ip, pod name, ready)."""
    return Service(
        key=ServiceKey(ns, name),
        cluster_ips=cluster_ips,
        ports=(ServicePort("http", 80, 8080),),
        endpoints=tuple(
            Endpoint(
                ip=ip,
                ports=(EndpointPort("http", 8080),),
                ready=ready,
                pod=PodKey(ns, pod),
                workload=WorkloadRef("StatefulSet", ns, name),
            )
            for ip, pod, ready in endpoints
        ),
    )


def table(*services: Service, node: str = "node1") -> DestinationTable:
    t = DestinationTable(node)
    snap = dpb.Snapshot(services=[codec.service_to_pb(s) for s in services], last=True)
    assert t.apply(dpb.Update(revision=1, snapshot=snap)) is not None
    return t
