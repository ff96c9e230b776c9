"""Shapes of the /api answers, so FastAPI's OpenAPI document says what each route returns."""

from __future__ import annotations

from pydantic import BaseModel


class Error(BaseModel):
    error: str
    status: int


class StatRow(BaseModel):
    kind: str
    namespace: str
    name: str
    meshed_pods: int
    total_pods: int
    requests: int
    rps: float
    success_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    tcp_open_connections: int
    tcp_read_bytes: int
    tcp_write_bytes: int
    authz_denied: int = 0  # requests and connections the destination's policy denied


class NamespaceRow(StatRow):
    labelled: bool  # carries nodemesh.io/mesh=enabled


class AgentNode(BaseModel):
    name: str
    internal_ip: str
    pod_cidr: str
    ready: bool
    pods: int
    meshed_pods: int
    agent_connected: bool
    agent_version: str
    last_report_unix_ms: int
    pods_enrolled: int
    open_connections: int
    cpu_seconds: float
    rss_bytes: int


class Overview(BaseModel):
    window: int
    namespaces: list[NamespaceRow]
    nodes: list[AgentNode]


class Deployments(BaseModel):
    window: int
    namespace: str  # empty: all namespaces
    deployments: list[StatRow]


class EdgeRow(BaseModel):
    src_namespace: str
    src: str
    dst_namespace: str
    dst: str
    src_identity: str
    dst_identity: str
    tls: bool
    requests: int
    tcp_connections: int
    rps: float
    success_rate: float | None
    latency_p99_ms: float | None


class Series(BaseModel):
    t: list[float]
    rps: list[float | None]
    success_rate: list[float | None]
    latency_p50_ms: list[float | None]
    latency_p95_ms: list[float | None]
    latency_p99_ms: list[float | None]


class RouteRow(BaseModel):
    service_namespace: str  # the Service the clients called (the route's parent)
    service: str
    route: str  # namespace/name/rule, or "default" (no rule took the request)
    kind: str  # HTTPRoute, GRPCRoute, or empty for "default"
    requests: int
    rps: float
    success_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


class Deployment(BaseModel):
    window: int
    namespace: str
    name: str
    stat: StatRow | None
    identities: list[str]
    pods: int
    ready_pods: int
    meshed_pods: int
    nodes: list[str]
    mesh_errors: list[str]
    pod_rows: list[StatRow]
    inbound: list[EdgeRow]
    outbound: list[EdgeRow]
    history: Series
    routes: list[RouteRow] = []  # of the Services whose endpoints are the Deployment's pods
    routes_error: str = ""  # why there are no route rows, when the control plane said


class TopologyNode(BaseModel):
    namespace: str
    name: str
    rps: float
    success_rate: float | None
    meshed_pods: int
    total_pods: int


class Topology(BaseModel):
    window: int
    namespace: str
    nodes: list[TopologyNode]
    edges: list[EdgeRow]


class Nodes(BaseModel):
    nodes: list[AgentNode]


class Version(BaseModel):
    dashboard: str
    controlplane: str
    source: str
    trust_domain: str
    synced: bool
