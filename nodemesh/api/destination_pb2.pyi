from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InboundMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INBOUND_MODE_UNSPECIFIED: _ClassVar[InboundMode]
    PERMISSIVE: _ClassVar[InboundMode]
    STRICT: _ClassVar[InboundMode]
INBOUND_MODE_UNSPECIFIED: InboundMode
PERMISSIVE: InboundMode
STRICT: InboundMode

class SubscribeRequest(_message.Message):
    __slots__ = ("node", "agent_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    agent_version: str
    def __init__(self, node: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("revision", "snapshot", "delta")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    revision: int
    snapshot: Snapshot
    delta: Delta
    def __init__(self, revision: _Optional[int] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ..., delta: _Optional[_Union[Delta, _Mapping]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("services", "workloads", "pods", "last", "meshed_pods", "authz_policies", "routes")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_POLICIES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    pods: _containers.RepeatedCompositeFieldContainer[Pod]
    last: bool
    meshed_pods: _containers.RepeatedCompositeFieldContainer[MeshedPod]
    authz_policies: _containers.RepeatedCompositeFieldContainer[AuthzPolicy]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., pods: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ..., last: _Optional[bool] = ..., meshed_pods: _Optional[_Iterable[_Union[MeshedPod, _Mapping]]] = ..., authz_policies: _Optional[_Iterable[_Union[AuthzPolicy, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("services_updated", "services_removed", "workloads_updated", "workloads_removed", "pods_updated", "pods_removed", "meshed_pods_updated", "meshed_pods_removed", "authz_policies_updated", "authz_policies_removed", "routes_updated", "routes_removed")
    SERVICES_UPDATED_FIELD_NUMBER: _ClassVar[int]
    SERVICES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    PODS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    PODS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_UPDATED_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_POLICIES_UPDATED_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_POLICIES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ROUTES_UPDATED_FIELD_NUMBER: _ClassVar[int]
    ROUTES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    services_updated: _containers.RepeatedCompositeFieldContainer[Service]
    services_removed: _containers.RepeatedCompositeFieldContainer[ServiceKey]
    workloads_updated: _containers.RepeatedCompositeFieldContainer[Workload]
    workloads_removed: _containers.RepeatedCompositeFieldContainer[WorkloadRef]
    pods_updated: _containers.RepeatedCompositeFieldContainer[Pod]
    pods_removed: _containers.RepeatedCompositeFieldContainer[PodKey]
    meshed_pods_updated: _containers.RepeatedCompositeFieldContainer[MeshedPod]
    meshed_pods_removed: _containers.RepeatedCompositeFieldContainer[PodKey]
    authz_policies_updated: _containers.RepeatedCompositeFieldContainer[AuthzPolicy]
    authz_policies_removed: _containers.RepeatedCompositeFieldContainer[AuthzPolicyKey]
    routes_updated: _containers.RepeatedCompositeFieldContainer[Route]
    routes_removed: _containers.RepeatedCompositeFieldContainer[RouteKey]
    def __init__(self, services_updated: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., services_removed: _Optional[_Iterable[_Union[ServiceKey, _Mapping]]] = ..., workloads_updated: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., workloads_removed: _Optional[_Iterable[_Union[WorkloadRef, _Mapping]]] = ..., pods_updated: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ..., pods_removed: _Optional[_Iterable[_Union[PodKey, _Mapping]]] = ..., meshed_pods_updated: _Optional[_Iterable[_Union[MeshedPod, _Mapping]]] = ..., meshed_pods_removed: _Optional[_Iterable[_Union[PodKey, _Mapping]]] = ..., authz_policies_updated: _Optional[_Iterable[_Union[AuthzPolicy, _Mapping]]] = ..., authz_policies_removed: _Optional[_Iterable[_Union[AuthzPolicyKey, _Mapping]]] = ..., routes_updated: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., routes_removed: _Optional[_Iterable[_Union[RouteKey, _Mapping]]] = ...) -> None: ...

class PodKey(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ServiceKey(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class WorkloadRef(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class PortRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class MeshSettings(_message.Message):
    __slots__ = ("meshed", "inbound_mode", "opaque_ports", "skip_inbound_ports", "skip_outbound_ports", "errors", "allow_inbound_udp_ports")
    MESHED_FIELD_NUMBER: _ClassVar[int]
    INBOUND_MODE_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_PORTS_FIELD_NUMBER: _ClassVar[int]
    SKIP_INBOUND_PORTS_FIELD_NUMBER: _ClassVar[int]
    SKIP_OUTBOUND_PORTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_INBOUND_UDP_PORTS_FIELD_NUMBER: _ClassVar[int]
    meshed: bool
    inbound_mode: InboundMode
    opaque_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    skip_inbound_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    skip_outbound_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    errors: _containers.RepeatedScalarFieldContainer[str]
    allow_inbound_udp_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    def __init__(self, meshed: _Optional[bool] = ..., inbound_mode: _Optional[_Union[InboundMode, str]] = ..., opaque_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., skip_inbound_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., skip_outbound_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., errors: _Optional[_Iterable[str]] = ..., allow_inbound_udp_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ...) -> None: ...

class Pod(_message.Message):
    __slots__ = ("key", "uid", "node", "ip", "host_ip", "phase", "ready", "service_account", "identity", "workload", "mesh", "host_network", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    MESH_FIELD_NUMBER: _ClassVar[int]
    HOST_NETWORK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    key: PodKey
    uid: str
    node: str
    ip: str
    host_ip: str
    phase: str
    ready: bool
    service_account: str
    identity: str
    workload: WorkloadRef
    mesh: MeshSettings
    host_network: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[_Union[PodKey, _Mapping]] = ..., uid: _Optional[str] = ..., node: _Optional[str] = ..., ip: _Optional[str] = ..., host_ip: _Optional[str] = ..., phase: _Optional[str] = ..., ready: _Optional[bool] = ..., service_account: _Optional[str] = ..., identity: _Optional[str] = ..., workload: _Optional[_Union[WorkloadRef, _Mapping]] = ..., mesh: _Optional[_Union[MeshSettings, _Mapping]] = ..., host_network: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MeshedPod(_message.Message):
    __slots__ = ("key", "ip", "node", "identity", "workload", "inbound_mode", "opaque_ports")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    INBOUND_MODE_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_PORTS_FIELD_NUMBER: _ClassVar[int]
    key: PodKey
    ip: str
    node: str
    identity: str
    workload: WorkloadRef
    inbound_mode: InboundMode
    opaque_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    def __init__(self, key: _Optional[_Union[PodKey, _Mapping]] = ..., ip: _Optional[str] = ..., node: _Optional[str] = ..., identity: _Optional[str] = ..., workload: _Optional[_Union[WorkloadRef, _Mapping]] = ..., inbound_mode: _Optional[_Union[InboundMode, str]] = ..., opaque_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("ref", "identities")
    REF_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ref: WorkloadRef
    identities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[_Union[WorkloadRef, _Mapping]] = ..., identities: _Optional[_Iterable[str]] = ...) -> None: ...

class EndpointPort(_message.Message):
    __slots__ = ("name", "port", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    protocol: str
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("ip", "ports", "ready", "terminating", "node", "pod", "workload", "identity", "meshed", "opaque_ports")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    TERMINATING_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MESHED_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_PORTS_FIELD_NUMBER: _ClassVar[int]
    ip: str
    ports: _containers.RepeatedCompositeFieldContainer[EndpointPort]
    ready: bool
    terminating: bool
    node: str
    pod: PodKey
    workload: WorkloadRef
    identity: str
    meshed: bool
    opaque_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    def __init__(self, ip: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[EndpointPort, _Mapping]]] = ..., ready: _Optional[bool] = ..., terminating: _Optional[bool] = ..., node: _Optional[str] = ..., pod: _Optional[_Union[PodKey, _Mapping]] = ..., workload: _Optional[_Union[WorkloadRef, _Mapping]] = ..., identity: _Optional[str] = ..., meshed: _Optional[bool] = ..., opaque_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("name", "port", "target_port_number", "target_port_name", "protocol")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    target_port_number: int
    target_port_name: str
    protocol: str
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., target_port_number: _Optional[int] = ..., target_port_name: _Optional[str] = ..., protocol: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("key", "cluster_ips", "ports", "endpoints", "opaque_ports", "router")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IPS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_PORTS_FIELD_NUMBER: _ClassVar[int]
    ROUTER_FIELD_NUMBER: _ClassVar[int]
    key: ServiceKey
    cluster_ips: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    opaque_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    router: bool
    def __init__(self, key: _Optional[_Union[ServiceKey, _Mapping]] = ..., cluster_ips: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., opaque_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., router: _Optional[bool] = ...) -> None: ...

class AuthzPolicyKey(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class AuthzRequestMatch(_message.Message):
    __slots__ = ("methods", "paths")
    METHODS_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    methods: _containers.RepeatedScalarFieldContainer[str]
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, methods: _Optional[_Iterable[str]] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class AuthzRule(_message.Message):
    __slots__ = ("any_client", "identities", "identity_prefixes", "networks", "requests")
    ANY_CLIENT_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    any_client: bool
    identities: _containers.RepeatedScalarFieldContainer[str]
    identity_prefixes: _containers.RepeatedScalarFieldContainer[str]
    networks: _containers.RepeatedScalarFieldContainer[str]
    requests: _containers.RepeatedCompositeFieldContainer[AuthzRequestMatch]
    def __init__(self, any_client: _Optional[bool] = ..., identities: _Optional[_Iterable[str]] = ..., identity_prefixes: _Optional[_Iterable[str]] = ..., networks: _Optional[_Iterable[str]] = ..., requests: _Optional[_Iterable[_Union[AuthzRequestMatch, _Mapping]]] = ...) -> None: ...

class AuthzPolicy(_message.Message):
    __slots__ = ("key", "pods", "ports", "default", "rules", "cluster_prefix")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_PREFIX_FIELD_NUMBER: _ClassVar[int]
    key: AuthzPolicyKey
    pods: _containers.RepeatedCompositeFieldContainer[PodKey]
    ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    default: str
    rules: _containers.RepeatedCompositeFieldContainer[AuthzRule]
    cluster_prefix: str
    def __init__(self, key: _Optional[_Union[AuthzPolicyKey, _Mapping]] = ..., pods: _Optional[_Iterable[_Union[PodKey, _Mapping]]] = ..., ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., default: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[AuthzRule, _Mapping]]] = ..., cluster_prefix: _Optional[str] = ...) -> None: ...

class RouteKey(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RouteParent(_message.Message):
    __slots__ = ("service", "port")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    service: ServiceKey
    port: int
    def __init__(self, service: _Optional[_Union[ServiceKey, _Mapping]] = ..., port: _Optional[int] = ...) -> None: ...

class ValueMatch(_message.Message):
    __slots__ = ("name", "value", "regex")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    regex: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ..., regex: _Optional[bool] = ...) -> None: ...

class RouteMatch(_message.Message):
    __slots__ = ("path_kind", "path", "method", "headers", "query")
    PATH_KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    path_kind: str
    path: str
    method: str
    headers: _containers.RepeatedCompositeFieldContainer[ValueMatch]
    query: _containers.RepeatedCompositeFieldContainer[ValueMatch]
    def __init__(self, path_kind: _Optional[str] = ..., path: _Optional[str] = ..., method: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[ValueMatch, _Mapping]]] = ..., query: _Optional[_Iterable[_Union[ValueMatch, _Mapping]]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HeaderModifier(_message.Message):
    __slots__ = ("set", "add", "remove")
    SET_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    set: _containers.RepeatedCompositeFieldContainer[Header]
    add: _containers.RepeatedCompositeFieldContainer[Header]
    remove: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, set: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., add: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., remove: _Optional[_Iterable[str]] = ...) -> None: ...

class PathModifier(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Rewrite(_message.Message):
    __slots__ = ("hostname", "path")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    path: PathModifier
    def __init__(self, hostname: _Optional[str] = ..., path: _Optional[_Union[PathModifier, _Mapping]] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("scheme", "hostname", "path", "port", "status_code")
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    scheme: str
    hostname: str
    path: PathModifier
    port: int
    status_code: int
    def __init__(self, scheme: _Optional[str] = ..., hostname: _Optional[str] = ..., path: _Optional[_Union[PathModifier, _Mapping]] = ..., port: _Optional[int] = ..., status_code: _Optional[int] = ...) -> None: ...

class RouteBackend(_message.Message):
    __slots__ = ("service", "port", "weight")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    service: ServiceKey
    port: int
    weight: int
    def __init__(self, service: _Optional[_Union[ServiceKey, _Mapping]] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ...) -> None: ...

class Retry(_message.Message):
    __slots__ = ("codes", "attempts", "backoff_ms")
    CODES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    codes: _containers.RepeatedScalarFieldContainer[int]
    attempts: int
    backoff_ms: int
    def __init__(self, codes: _Optional[_Iterable[int]] = ..., attempts: _Optional[int] = ..., backoff_ms: _Optional[int] = ...) -> None: ...

class RetryBudget(_message.Message):
    __slots__ = ("ratio", "min_per_second", "ttl_s")
    RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    ratio: float
    min_per_second: int
    ttl_s: int
    def __init__(self, ratio: _Optional[float] = ..., min_per_second: _Optional[int] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class RouteRule(_message.Message):
    __slots__ = ("matches", "backends", "request_headers", "response_headers", "rewrite", "redirect", "request_timeout_ms", "backend_timeout_ms", "retry", "name")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    REWRITE_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[RouteMatch]
    backends: _containers.RepeatedCompositeFieldContainer[RouteBackend]
    request_headers: HeaderModifier
    response_headers: HeaderModifier
    rewrite: Rewrite
    redirect: Redirect
    request_timeout_ms: int
    backend_timeout_ms: int
    retry: Retry
    name: str
    def __init__(self, matches: _Optional[_Iterable[_Union[RouteMatch, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[RouteBackend, _Mapping]]] = ..., request_headers: _Optional[_Union[HeaderModifier, _Mapping]] = ..., response_headers: _Optional[_Union[HeaderModifier, _Mapping]] = ..., rewrite: _Optional[_Union[Rewrite, _Mapping]] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ..., request_timeout_ms: _Optional[int] = ..., backend_timeout_ms: _Optional[int] = ..., retry: _Optional[_Union[Retry, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("key", "parents", "rules", "hostnames", "budget", "created", "retry_non_idempotent")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAMES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    RETRY_NON_IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    key: RouteKey
    parents: _containers.RepeatedCompositeFieldContainer[RouteParent]
    rules: _containers.RepeatedCompositeFieldContainer[RouteRule]
    hostnames: _containers.RepeatedScalarFieldContainer[str]
    budget: RetryBudget
    created: str
    retry_non_idempotent: bool
    def __init__(self, key: _Optional[_Union[RouteKey, _Mapping]] = ..., parents: _Optional[_Iterable[_Union[RouteParent, _Mapping]]] = ..., rules: _Optional[_Iterable[_Union[RouteRule, _Mapping]]] = ..., hostnames: _Optional[_Iterable[str]] = ..., budget: _Optional[_Union[RetryBudget, _Mapping]] = ..., created: _Optional[str] = ..., retry_non_idempotent: _Optional[bool] = ...) -> None: ...
