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
    __slots__ = ("services", "workloads", "pods", "last", "meshed_pods", "authz_policies")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MESHED_PODS_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_POLICIES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    pods: _containers.RepeatedCompositeFieldContainer[Pod]
    last: bool
    meshed_pods: _containers.RepeatedCompositeFieldContainer[MeshedPod]
    authz_policies: _containers.RepeatedCompositeFieldContainer[AuthzPolicy]
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., pods: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ..., last: _Optional[bool] = ..., meshed_pods: _Optional[_Iterable[_Union[MeshedPod, _Mapping]]] = ..., authz_policies: _Optional[_Iterable[_Union[AuthzPolicy, _Mapping]]] = ...) -> None: ...

class Delta(_message.Message):
    __slots__ = ("services_updated", "services_removed", "workloads_updated", "workloads_removed", "pods_updated", "pods_removed", "meshed_pods_updated", "meshed_pods_removed", "authz_policies_updated", "authz_policies_removed")
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
    def __init__(self, services_updated: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., services_removed: _Optional[_Iterable[_Union[ServiceKey, _Mapping]]] = ..., workloads_updated: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., workloads_removed: _Optional[_Iterable[_Union[WorkloadRef, _Mapping]]] = ..., pods_updated: _Optional[_Iterable[_Union[Pod, _Mapping]]] = ..., pods_removed: _Optional[_Iterable[_Union[PodKey, _Mapping]]] = ..., meshed_pods_updated: _Optional[_Iterable[_Union[MeshedPod, _Mapping]]] = ..., meshed_pods_removed: _Optional[_Iterable[_Union[PodKey, _Mapping]]] = ..., authz_policies_updated: _Optional[_Iterable[_Union[AuthzPolicy, _Mapping]]] = ..., authz_policies_removed: _Optional[_Iterable[_Union[AuthzPolicyKey, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("key", "cluster_ips", "ports", "endpoints", "opaque_ports")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IPS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    OPAQUE_PORTS_FIELD_NUMBER: _ClassVar[int]
    key: ServiceKey
    cluster_ips: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    opaque_ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    def __init__(self, key: _Optional[_Union[ServiceKey, _Mapping]] = ..., cluster_ips: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., opaque_ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ...) -> None: ...

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
