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

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    HTTP1: _ClassVar[Protocol]
    HTTP2: _ClassVar[Protocol]
    GRPC: _ClassVar[Protocol]
    TCP: _ClassVar[Protocol]
    TLS: _ClassVar[Protocol]

class Classification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_UNSPECIFIED: _ClassVar[Classification]
    SUCCESS: _ClassVar[Classification]
    FAILURE: _ClassVar[Classification]
DIRECTION_UNSPECIFIED: Direction
INBOUND: Direction
OUTBOUND: Direction
PROTOCOL_UNSPECIFIED: Protocol
HTTP1: Protocol
HTTP2: Protocol
GRPC: Protocol
TCP: Protocol
TLS: Protocol
CLASSIFICATION_UNSPECIFIED: Classification
SUCCESS: Classification
FAILURE: Classification

class Peer(_message.Message):
    __slots__ = ("namespace", "deployment", "pod", "service", "identity")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    deployment: str
    pod: str
    service: str
    identity: str
    def __init__(self, namespace: _Optional[str] = ..., deployment: _Optional[str] = ..., pod: _Optional[str] = ..., service: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("buckets", "counts", "sum_us")
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_US_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedScalarFieldContainer[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    sum_us: int
    def __init__(self, buckets: _Optional[_Iterable[int]] = ..., counts: _Optional[_Iterable[int]] = ..., sum_us: _Optional[int] = ...) -> None: ...

class RequestSeries(_message.Message):
    __slots__ = ("direction", "src", "dst", "protocol", "status_code", "grpc_status", "classification", "tls", "responses", "latency", "authz_deny", "route")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_DENY_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    direction: Direction
    src: Peer
    dst: Peer
    protocol: Protocol
    status_code: int
    grpc_status: int
    classification: Classification
    tls: bool
    responses: int
    latency: Histogram
    authz_deny: str
    route: str
    def __init__(self, direction: _Optional[_Union[Direction, str]] = ..., src: _Optional[_Union[Peer, _Mapping]] = ..., dst: _Optional[_Union[Peer, _Mapping]] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., status_code: _Optional[int] = ..., grpc_status: _Optional[int] = ..., classification: _Optional[_Union[Classification, str]] = ..., tls: _Optional[bool] = ..., responses: _Optional[int] = ..., latency: _Optional[_Union[Histogram, _Mapping]] = ..., authz_deny: _Optional[str] = ..., route: _Optional[str] = ...) -> None: ...

class TcpSeries(_message.Message):
    __slots__ = ("direction", "src", "dst", "tls", "opened", "closed", "read_bytes", "write_bytes", "open_connections", "authz_denied")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPEN_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    AUTHZ_DENIED_FIELD_NUMBER: _ClassVar[int]
    direction: Direction
    src: Peer
    dst: Peer
    tls: bool
    opened: int
    closed: int
    read_bytes: int
    write_bytes: int
    open_connections: int
    authz_denied: int
    def __init__(self, direction: _Optional[_Union[Direction, str]] = ..., src: _Optional[_Union[Peer, _Mapping]] = ..., dst: _Optional[_Union[Peer, _Mapping]] = ..., tls: _Optional[bool] = ..., opened: _Optional[int] = ..., closed: _Optional[int] = ..., read_bytes: _Optional[int] = ..., write_bytes: _Optional[int] = ..., open_connections: _Optional[int] = ..., authz_denied: _Optional[int] = ...) -> None: ...

class AgentLoad(_message.Message):
    __slots__ = ("pods_enrolled", "open_connections", "cpu_seconds", "rss_bytes", "enrolled_pods")
    PODS_ENROLLED_FIELD_NUMBER: _ClassVar[int]
    OPEN_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_PODS_FIELD_NUMBER: _ClassVar[int]
    pods_enrolled: int
    open_connections: int
    cpu_seconds: float
    rss_bytes: int
    enrolled_pods: _containers.RepeatedCompositeFieldContainer[EnrolledPod]
    def __init__(self, pods_enrolled: _Optional[int] = ..., open_connections: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., enrolled_pods: _Optional[_Iterable[_Union[EnrolledPod, _Mapping]]] = ...) -> None: ...

class EnrolledPod(_message.Message):
    __slots__ = ("namespace", "name", "uid")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    uid: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., uid: _Optional[str] = ...) -> None: ...

class AgentReport(_message.Message):
    __slots__ = ("node", "agent_version", "sequence", "timestamp_ms", "interval_ms", "load", "requests", "tcp")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    node: str
    agent_version: str
    sequence: int
    timestamp_ms: int
    interval_ms: int
    load: AgentLoad
    requests: _containers.RepeatedCompositeFieldContainer[RequestSeries]
    tcp: _containers.RepeatedCompositeFieldContainer[TcpSeries]
    def __init__(self, node: _Optional[str] = ..., agent_version: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., interval_ms: _Optional[int] = ..., load: _Optional[_Union[AgentLoad, _Mapping]] = ..., requests: _Optional[_Iterable[_Union[RequestSeries, _Mapping]]] = ..., tcp: _Optional[_Iterable[_Union[TcpSeries, _Mapping]]] = ...) -> None: ...

class ReportAck(_message.Message):
    __slots__ = ("sequence", "accepted", "reason")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted: bool
    reason: str
    def __init__(self, sequence: _Optional[int] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...
