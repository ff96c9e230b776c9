from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    INBOUND: _ClassVar[Direction]
    OUTBOUND: _ClassVar[Direction]
DIRECTION_UNSPECIFIED: Direction
INBOUND: Direction
OUTBOUND: Direction

class AgentTapMessage(_message.Message):
    __slots__ = ("hello", "event")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    hello: AgentHello
    event: TapEvent
    def __init__(self, hello: _Optional[_Union[AgentHello, _Mapping]] = ..., event: _Optional[_Union[TapEvent, _Mapping]] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("node", "agent_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    agent_version: str
    def __init__(self, node: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class TapCommand(_message.Message):
    __slots__ = ("start", "stop")
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    start: TapSubscription
    stop: str
    def __init__(self, start: _Optional[_Union[TapSubscription, _Mapping]] = ..., stop: _Optional[str] = ...) -> None: ...

class ResourceRef(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class PodRef(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class TapSubscription(_message.Message):
    __slots__ = ("id", "resource", "to", "pods", "to_addresses", "method", "path_prefix", "max_rps")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    PODS_FIELD_NUMBER: _ClassVar[int]
    TO_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MAX_RPS_FIELD_NUMBER: _ClassVar[int]
    id: str
    resource: ResourceRef
    to: ResourceRef
    pods: _containers.RepeatedCompositeFieldContainer[PodRef]
    to_addresses: _containers.RepeatedScalarFieldContainer[str]
    method: str
    path_prefix: str
    max_rps: float
    def __init__(self, id: _Optional[str] = ..., resource: _Optional[_Union[ResourceRef, _Mapping]] = ..., to: _Optional[_Union[ResourceRef, _Mapping]] = ..., pods: _Optional[_Iterable[_Union[PodRef, _Mapping]]] = ..., to_addresses: _Optional[_Iterable[str]] = ..., method: _Optional[str] = ..., path_prefix: _Optional[str] = ..., max_rps: _Optional[float] = ...) -> None: ...

class TapPeer(_message.Message):
    __slots__ = ("ip", "port", "namespace", "pod", "workload_kind", "workload", "service", "identity")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_KIND_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ip: str
    port: int
    namespace: str
    pod: str
    workload_kind: str
    workload: str
    service: str
    identity: str
    def __init__(self, ip: _Optional[str] = ..., port: _Optional[int] = ..., namespace: _Optional[str] = ..., pod: _Optional[str] = ..., workload_kind: _Optional[str] = ..., workload: _Optional[str] = ..., service: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class RequestInit(_message.Message):
    __slots__ = ("method", "scheme", "authority", "path", "protocol", "route")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    method: str
    scheme: str
    authority: str
    path: str
    protocol: str
    route: str
    def __init__(self, method: _Optional[str] = ..., scheme: _Optional[str] = ..., authority: _Optional[str] = ..., path: _Optional[str] = ..., protocol: _Optional[str] = ..., route: _Optional[str] = ...) -> None: ...

class ResponseInit(_message.Message):
    __slots__ = ("status", "since_request_us")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SINCE_REQUEST_US_FIELD_NUMBER: _ClassVar[int]
    status: int
    since_request_us: int
    def __init__(self, status: _Optional[int] = ..., since_request_us: _Optional[int] = ...) -> None: ...

class ResponseEnd(_message.Message):
    __slots__ = ("grpc_status", "since_request_us", "request_bytes", "response_bytes", "error")
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    SINCE_REQUEST_US_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    grpc_status: int
    since_request_us: int
    request_bytes: int
    response_bytes: int
    error: str
    def __init__(self, grpc_status: _Optional[int] = ..., since_request_us: _Optional[int] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class TapEvent(_message.Message):
    __slots__ = ("subscription_id", "request_id", "node", "direction", "src", "dst", "tls", "timestamp_ms", "req", "rsp", "end")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQ_FIELD_NUMBER: _ClassVar[int]
    RSP_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    request_id: int
    node: str
    direction: Direction
    src: TapPeer
    dst: TapPeer
    tls: bool
    timestamp_ms: int
    req: RequestInit
    rsp: ResponseInit
    end: ResponseEnd
    def __init__(self, subscription_id: _Optional[str] = ..., request_id: _Optional[int] = ..., node: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., src: _Optional[_Union[TapPeer, _Mapping]] = ..., dst: _Optional[_Union[TapPeer, _Mapping]] = ..., tls: _Optional[bool] = ..., timestamp_ms: _Optional[int] = ..., req: _Optional[_Union[RequestInit, _Mapping]] = ..., rsp: _Optional[_Union[ResponseInit, _Mapping]] = ..., end: _Optional[_Union[ResponseEnd, _Mapping]] = ...) -> None: ...
