"""Check an agent's telemetry report and turn it into series samples (sans-io: no grpc, no I/O).

Interface: `parse_report(report, *, encoded_size) -> ParsedReport` or `BadReport(reason,
message)`; a report is taken whole or refused whole. Keys (`Peer`, `RequestKey`, `TcpKey`) are
hashable and are what the store indexes series by.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from nodemesh.api import telemetry_pb2 as pb
from nodemesh.histogram import LatencyHistogram

MAX_REPORT_BYTES = 4 * 1024 * 1024
MAX_SERIES_PER_REPORT = 10_000
MAX_NAME = 253
MAX_IDENTITY = 512
MAX_INTERVAL_MS = 60_000
MAX_ENROLLED_PODS = 10_000

DIRECTIONS: dict[int, str] = {pb.INBOUND: "inbound", pb.OUTBOUND: "outbound"}
PROTOCOLS: dict[int, str] = {
    pb.HTTP1: "http1",
    pb.HTTP2: "http2",
    pb.GRPC: "grpc",
    pb.TCP: "tcp",
    pb.TLS: "tls",
}
CLASSES: dict[int, bool] = {pb.SUCCESS: True, pb.FAILURE: False}


class BadReport(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Peer:
    namespace: str = ""
    deployment: str = ""
    pod: str = ""
    service: str = ""
    identity: str = ""


@dataclass(frozen=True, slots=True)
class RequestKey:
    node: str  # the agent that reported it
    direction: str  # inbound | outbound
    src: Peer
    dst: Peer
    protocol: str
    status_code: int
    grpc_status: int | None
    success: bool
    tls: bool
    authz: str = ""  # the policy that denied these requests ("" when allowed)
    # The mesh route rule of the client's L7 path (namespace/name/rule or "default"); series
    # with a route are counted by `nodemesh routes` only (the relay observed them too).
    route: str = ""


@dataclass(frozen=True, slots=True)
class TcpKey:
    node: str
    direction: str
    src: Peer
    dst: Peer
    tls: bool


@dataclass(frozen=True, slots=True)
class TcpCounts:
    opened: int
    closed: int
    read_bytes: int
    write_bytes: int
    open_connections: int
    authz_denied: int = 0


@dataclass(frozen=True)
class ParsedReport:
    node: str
    version: str
    sequence: int
    load: pb.AgentLoad
    requests: list[tuple[RequestKey, int, LatencyHistogram]]  # key, responses, latency
    tcp: list[tuple[TcpKey, TcpCounts]]


def _name(value: str, what: str, limit: int = MAX_NAME) -> str:
    if len(value) > limit or any(c in value for c in "\x00\n\r"):
        raise BadReport("garbled", f"{what} is not a valid name ({len(value)} chars)")
    # Thousands of series repeat the same few namespaces, workloads and identities.
    return sys.intern(value)


# Checked peers by their encoding: every agent names the same few thousand peers each second,
# and checking each name again was a third of the ingest cost at 500 agents.
_PEERS: dict[bytes, Peer] = {}
PEER_CACHE_SIZE = 50_000


def _peer(p: pb.Peer, side: str) -> Peer:
    raw = p.SerializeToString()
    known = _PEERS.get(raw)
    if known is not None:
        return known
    peer = Peer(
        _name(p.namespace, f"{side}.namespace"),
        _name(p.deployment, f"{side}.deployment"),
        _name(p.pod, f"{side}.pod"),
        _name(p.service, f"{side}.service"),
        _name(p.identity, f"{side}.identity", MAX_IDENTITY),
    )
    if len(_PEERS) >= PEER_CACHE_SIZE:
        _PEERS.clear()
    _PEERS[raw] = peer
    return peer


def _direction(value: int) -> str:
    if value not in DIRECTIONS:
        raise BadReport("garbled", f"unknown direction {value}")
    return DIRECTIONS[value]


def _request(node: str, s: pb.RequestSeries) -> tuple[RequestKey, int, LatencyHistogram]:
    if s.protocol not in PROTOCOLS:
        raise BadReport("garbled", f"unknown protocol {s.protocol}")
    if s.classification not in CLASSES:
        raise BadReport("garbled", f"unknown classification {s.classification}")
    if s.status_code > 999:
        raise BadReport("garbled", f"status code {s.status_code}")
    if s.HasField("grpc_status") and s.grpc_status > 16:
        raise BadReport("garbled", f"gRPC status {s.grpc_status}")
    try:
        latency = LatencyHistogram.from_sparse(
            s.latency.buckets, s.latency.counts, s.latency.sum_us
        )
    except ValueError as e:
        raise BadReport("garbled", f"latency histogram: {e}") from e
    if latency.total not in (0, s.responses):
        raise BadReport(
            "garbled", f"histogram holds {latency.total} samples for {s.responses} responses"
        )
    key = RequestKey(
        node=node,
        direction=_direction(s.direction),
        src=_peer(s.src, "src"),
        dst=_peer(s.dst, "dst"),
        protocol=PROTOCOLS[s.protocol],
        status_code=s.status_code,
        grpc_status=s.grpc_status if s.HasField("grpc_status") else None,
        success=CLASSES[s.classification],
        tls=s.tls,
        authz=_name(s.authz_deny, "authz_deny"),
        route=_route(s),
    )
    return key, s.responses, latency


def _route(s: pb.RequestSeries) -> str:
    if not s.route:
        return ""
    if s.direction != pb.OUTBOUND or not s.dst.service:
        raise BadReport("garbled", f"route {s.route[:80]!r} on a series that names no Service")
    # namespace/name/rule: each part at most a Kubernetes name.
    return _name(s.route, "route", 3 * MAX_NAME + 2)


def _tcp(node: str, s: pb.TcpSeries) -> tuple[TcpKey, TcpCounts]:
    key = TcpKey(node, _direction(s.direction), _peer(s.src, "src"), _peer(s.dst, "dst"), s.tls)
    counts = TcpCounts(
        s.opened, s.closed, s.read_bytes, s.write_bytes, s.open_connections, s.authz_denied
    )
    return key, counts


def parse_report(report: pb.AgentReport, *, encoded_size: int) -> ParsedReport:
    if encoded_size > MAX_REPORT_BYTES:
        raise BadReport("oversized", f"report of {encoded_size} bytes > {MAX_REPORT_BYTES}")
    series = len(report.requests) + len(report.tcp)
    if series > MAX_SERIES_PER_REPORT:
        raise BadReport("oversized", f"report holds {series} series > {MAX_SERIES_PER_REPORT}")
    if not report.node:
        raise BadReport("garbled", "report names no node")
    node = _name(report.node, "node")
    if report.interval_ms > MAX_INTERVAL_MS:
        raise BadReport("garbled", f"interval of {report.interval_ms} ms")
    load = report.load
    if not math.isfinite(load.cpu_seconds) or load.cpu_seconds < 0:
        raise BadReport("garbled", f"cpu_seconds {load.cpu_seconds}")
    if len(load.enrolled_pods) > MAX_ENROLLED_PODS:
        raise BadReport(
            "oversized", f"{len(load.enrolled_pods)} enrolled pods > {MAX_ENROLLED_PODS}"
        )
    for p in load.enrolled_pods:
        _name(p.namespace, "enrolled_pods.namespace")
        _name(p.name, "enrolled_pods.name")
        _name(p.uid, "enrolled_pods.uid", 64)
    return ParsedReport(
        node=node,
        version=_name(report.agent_version, "agent_version", 64),
        sequence=report.sequence,
        load=load,
        requests=[_request(node, s) for s in report.requests],
        tcp=[_tcp(node, s) for s in report.tcp],
    )
