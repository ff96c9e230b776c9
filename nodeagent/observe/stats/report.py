"""Telemetry reports from the aggregate: what changed since the last one (sans-io, no I/O).

`take_reports(aggregate, node=..., ...)` moves every series' pending delta into AgentReport
messages and clears it, so the caller owns those numbers from then on (it re-sends them if the
stream breaks before the control plane acknowledged them). Series the proto cannot tell apart
(they differ only in authority) are merged here, not on the hot path. A report never holds
more than `max_series` series: a large backlog after an outage goes out in several.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nodeagent.observe.events import Peer
from nodeagent.observe.stats.series import Aggregate, RequestSeries
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.histogram import merge_into

DIRECTIONS = {"inbound": pb.INBOUND, "outbound": pb.OUTBOUND}
PROTOCOLS = {"http1": pb.HTTP1, "http2": pb.HTTP2, "grpc": pb.GRPC, "tcp": pb.TCP, "tls": pb.TLS}
MAX_SERIES_PER_REPORT = 5_000  # the control plane refuses more than 10k
MAX_INTERVAL_MS = 60_000  # and intervals longer than a minute
MAX_GRPC_STATUS = 16


@dataclass(frozen=True)
class Load:
    pods_enrolled: int
    open_connections: int
    cpu_seconds: float
    rss_bytes: int
    enrolled: tuple[tuple[str, str, str], ...] = ()  # (namespace, name, uid) of each pod


def deployment_of(peer: Peer) -> str:
    """The proto's `deployment`: only a Deployment's name (a StatefulSet is no Deployment)."""
    return peer.workload if peer.workload_kind.lower() == "deployment" else ""


def peer_pb(peer: Peer) -> pb.Peer:
    return pb.Peer(
        namespace=peer.namespace,
        deployment=deployment_of(peer),
        pod=peer.pod,
        service=peer.service,
        identity=peer.identity,
    )


class _Merged:
    __slots__ = ("responses", "counts", "sum_us")

    def __init__(self) -> None:
        self.responses = 0
        self.counts: dict[int, int] = {}
        self.sum_us = 0


def _request_key(s: RequestSeries) -> tuple[Any, ...]:
    grpc_status = s.grpc_status
    if grpc_status is not None and not 0 <= grpc_status <= MAX_GRPC_STATUS:
        grpc_status = 2  # UNKNOWN: what gRPC itself makes of a status outside the table
    status = s.status if s.status is not None and 0 <= s.status <= 999 else 0
    return (
        s.direction, _plain(s.src), _plain(s.dst), s.protocol, status, grpc_status, s.success,
        s.tls,
    )  # fmt: skip


def _plain(peer: Peer) -> tuple[str, str, str, str, str]:
    return (peer.namespace, deployment_of(peer), peer.pod, peer.service, peer.identity)


def _peer(values: tuple[str, str, str, str, str]) -> pb.Peer:
    ns, deployment, pod, service, identity = values
    return pb.Peer(namespace=ns, deployment=deployment, pod=pod, service=service, identity=identity)


def drain_requests(agg: Aggregate) -> list[pb.RequestSeries]:
    merged: dict[tuple[Any, ...], _Merged] = {}
    for s in agg.requests.values():
        if not s.pending_count or s.direction not in DIRECTIONS:
            continue
        if s.protocol not in PROTOCOLS:
            continue
        m = merged.get(key := _request_key(s))
        if m is None:
            m = merged[key] = _Merged()
        m.responses += s.pending_count
        merge_into(m.counts, s.pending)
        m.sum_us += s.pending_sum_us
        s.pending = {}
        s.pending_count = 0
        s.pending_sum_us = 0
    out = []
    for (direction, src, dst, protocol, status, grpc_status, success, tls), m in merged.items():
        indices = sorted(m.counts)
        series = pb.RequestSeries(
            direction=DIRECTIONS[direction],
            src=_peer(src),
            dst=_peer(dst),
            protocol=PROTOCOLS[protocol],
            status_code=status,
            classification=pb.SUCCESS if success else pb.FAILURE,
            tls=tls,
            responses=m.responses,
            latency=pb.Histogram(
                buckets=indices, counts=[m.counts[i] for i in indices], sum_us=m.sum_us
            ),
        )
        if grpc_status is not None:
            series.grpc_status = grpc_status
        out.append(series)
    return out


def drain_tcp(agg: Aggregate) -> list[pb.TcpSeries]:
    out = []
    for s in agg.tcp.values():
        # Open connections are reported every time, so the control plane's gauge stays current.
        if not (s.has_pending or s.open) or s.direction not in DIRECTIONS:
            continue
        out.append(
            pb.TcpSeries(
                direction=DIRECTIONS[s.direction],
                src=peer_pb(s.src),
                dst=peer_pb(s.dst),
                tls=s.tls,
                opened=s.p_opened,
                closed=s.p_closed,
                read_bytes=s.p_read,
                write_bytes=s.p_write,
                open_connections=max(s.open, 0),
            )
        )
        s.p_opened = s.p_closed = s.p_read = s.p_write = 0
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def take_reports(
    agg: Aggregate,
    *,
    node: str,
    version: str,
    load: Load,
    now_ms: int,
    interval_ms: int,
    max_series: int = MAX_SERIES_PER_REPORT,
) -> list[pb.AgentReport]:
    """The reports for everything pending (at least one, for the load); sequence left 0."""
    requests = drain_requests(agg)
    tcp = drain_tcp(agg)
    denied_requests, denied_tcp = agg.denials.drain()
    requests += denied_requests
    requests += agg.routes.drain()
    tcp += denied_tcp
    agg.generation += 1
    series: list[tuple[str, Any]] = [("r", s) for s in requests] + [("t", s) for s in tcp]
    reports = []
    for chunk in _chunks(series, max_series) if series else iter([[]]):
        report = pb.AgentReport(
            node=node,
            agent_version=version,
            timestamp_ms=now_ms,
            interval_ms=min(max(interval_ms, 0), MAX_INTERVAL_MS),
            load=pb.AgentLoad(
                pods_enrolled=load.pods_enrolled,
                open_connections=load.open_connections,
                cpu_seconds=load.cpu_seconds,
                rss_bytes=load.rss_bytes,
                enrolled_pods=[
                    pb.EnrolledPod(namespace=ns, name=name, uid=uid)
                    for ns, name, uid in load.enrolled
                ],
            ),
        )
        report.requests.extend(s for kind, s in chunk if kind == "r")
        report.tcp.extend(s for kind, s in chunk if kind == "t")
        reports.append(report)
    return reports
