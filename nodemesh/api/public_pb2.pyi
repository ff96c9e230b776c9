from nodemesh.api import tap_pb2 as _tap_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Resource(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("resource", "all_namespaces", "from_resource", "to_resource", "window_seconds")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ALL_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    FROM_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TO_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    all_namespaces: bool
    from_resource: Resource
    to_resource: Resource
    window_seconds: int
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., all_namespaces: _Optional[bool] = ..., from_resource: _Optional[_Union[Resource, _Mapping]] = ..., to_resource: _Optional[_Union[Resource, _Mapping]] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class StatRow(_message.Message):
    __slots__ = ("resource", "meshed_pods", "total_pods", "requests", "success_rate", "rps", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "tcp_open_connections", "tcp_read_bytes", "tcp_write_bytes", "covered_seconds", "authz_denied")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PODS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    TCP_OPEN_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    TCP_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    TCP_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COVERED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_DENIED_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    meshed_pods: int
    total_pods: int
    requests: int
    success_rate: float
    rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    tcp_open_connections: int
    tcp_read_bytes: int
    tcp_write_bytes: int
    covered_seconds: float
    authz_denied: int
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., meshed_pods: _Optional[int] = ..., total_pods: _Optional[int] = ..., requests: _Optional[int] = ..., success_rate: _Optional[float] = ..., rps: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., tcp_open_connections: _Optional[int] = ..., tcp_read_bytes: _Optional[int] = ..., tcp_write_bytes: _Optional[int] = ..., covered_seconds: _Optional[float] = ..., authz_denied: _Optional[int] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("rows", "window_seconds")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[StatRow]
    window_seconds: int
    def __init__(self, rows: _Optional[_Iterable[_Union[StatRow, _Mapping]]] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class EdgesRequest(_message.Message):
    __slots__ = ("kind", "namespace", "all_namespaces", "window_seconds")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ALL_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    all_namespaces: bool
    window_seconds: int
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., all_namespaces: _Optional[bool] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class Edge(_message.Message):
    __slots__ = ("src", "dst", "src_identity", "dst_identity", "tls", "requests", "tcp_connections")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    SRC_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DST_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TCP_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    src: Resource
    dst: Resource
    src_identity: str
    dst_identity: str
    tls: bool
    requests: int
    tcp_connections: int
    def __init__(self, src: _Optional[_Union[Resource, _Mapping]] = ..., dst: _Optional[_Union[Resource, _Mapping]] = ..., src_identity: _Optional[str] = ..., dst_identity: _Optional[str] = ..., tls: _Optional[bool] = ..., requests: _Optional[int] = ..., tcp_connections: _Optional[int] = ...) -> None: ...

class EdgesResponse(_message.Message):
    __slots__ = ("edges",)
    EDGES_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedCompositeFieldContainer[Edge]
    def __init__(self, edges: _Optional[_Iterable[_Union[Edge, _Mapping]]] = ...) -> None: ...

class TapRequest(_message.Message):
    __slots__ = ("resource", "to_resource", "method", "path_prefix", "max_rps")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TO_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_RPS_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    to_resource: Resource
    method: str
    path_prefix: str
    max_rps: float
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., to_resource: _Optional[_Union[Resource, _Mapping]] = ..., method: _Optional[str] = ..., path_prefix: _Optional[str] = ..., max_rps: _Optional[float] = ...) -> None: ...

class ListWorkloadsRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class WorkloadStatus(_message.Message):
    __slots__ = ("kind", "namespace", "name", "identities", "pods", "ready_pods", "meshed_pods", "nodes", "mesh_errors")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    READY_PODS_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MESH_ERRORS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    identities: _containers.RepeatedScalarFieldContainer[str]
    pods: int
    ready_pods: int
    meshed_pods: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    mesh_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., identities: _Optional[_Iterable[str]] = ..., pods: _Optional[int] = ..., ready_pods: _Optional[int] = ..., meshed_pods: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., mesh_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ListWorkloadsResponse(_message.Message):
    __slots__ = ("workloads", "namespaces_meshed")
    class NamespacesMeshedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_MESHED_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadStatus]
    namespaces_meshed: _containers.ScalarMap[str, bool]
    def __init__(self, workloads: _Optional[_Iterable[_Union[WorkloadStatus, _Mapping]]] = ..., namespaces_meshed: _Optional[_Mapping[str, bool]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("name", "internal_ip", "pod_cidr", "ready", "pods", "meshed_pods", "agent_connected", "agent_version", "last_report_unix_ms", "pods_enrolled", "open_connections", "cpu_seconds", "rss_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_IP_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    AGENT_CONNECTED_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PODS_ENROLLED_FIELD_NUMBER: _ClassVar[int]
    OPEN_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
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
    def __init__(self, name: _Optional[str] = ..., internal_ip: _Optional[str] = ..., pod_cidr: _Optional[str] = ..., ready: _Optional[bool] = ..., pods: _Optional[int] = ..., meshed_pods: _Optional[int] = ..., agent_connected: _Optional[bool] = ..., agent_version: _Optional[str] = ..., last_report_unix_ms: _Optional[int] = ..., pods_enrolled: _Optional[int] = ..., open_connections: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., rss_bytes: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class VersionRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VersionResponse(_message.Message):
    __slots__ = ("version", "source", "trust_domain", "synced")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    version: str
    source: str
    trust_domain: str
    synced: bool
    def __init__(self, version: _Optional[str] = ..., source: _Optional[str] = ..., trust_domain: _Optional[str] = ..., synced: _Optional[bool] = ...) -> None: ...

class RoutesRequest(_message.Message):
    __slots__ = ("resource", "from_resource", "window_seconds")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    FROM_RESOURCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    from_resource: Resource
    window_seconds: int
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., from_resource: _Optional[_Union[Resource, _Mapping]] = ..., window_seconds: _Optional[int] = ...) -> None: ...

class RouteRow(_message.Message):
    __slots__ = ("service_namespace", "service", "route", "kind", "requests", "success_rate", "rps", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "covered_seconds")
    SERVICE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    COVERED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    service_namespace: str
    service: str
    route: str
    kind: str
    requests: int
    success_rate: float
    rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    covered_seconds: float
    def __init__(self, service_namespace: _Optional[str] = ..., service: _Optional[str] = ..., route: _Optional[str] = ..., kind: _Optional[str] = ..., requests: _Optional[int] = ..., success_rate: _Optional[float] = ..., rps: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., covered_seconds: _Optional[float] = ...) -> None: ...

class AttachedRoute(_message.Message):
    __slots__ = ("kind", "namespace", "name", "service_namespace", "service", "port", "rules")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    service_namespace: str
    service: str
    port: int
    rules: int
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., service_namespace: _Optional[str] = ..., service: _Optional[str] = ..., port: _Optional[int] = ..., rules: _Optional[int] = ...) -> None: ...

class RoutesResponse(_message.Message):
    __slots__ = ("rows", "attached", "services", "window_seconds", "route_errors")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[RouteRow]
    attached: _containers.RepeatedCompositeFieldContainer[AttachedRoute]
    services: _containers.RepeatedScalarFieldContainer[str]
    window_seconds: int
    route_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rows: _Optional[_Iterable[_Union[RouteRow, _Mapping]]] = ..., attached: _Optional[_Iterable[_Union[AttachedRoute, _Mapping]]] = ..., services: _Optional[_Iterable[str]] = ..., window_seconds: _Optional[int] = ..., route_errors: _Optional[_Iterable[str]] = ...) -> None: ...
