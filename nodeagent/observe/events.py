"""What the data plane tells the observation sink: connection and request events, and the sink API.

The data plane (listeners, relays) produces these; the telemetry side (aggregation, /metrics,
report stream, tap) consumes them through one `ObservationSink` injected into the proxy.
"outbound" events are recorded by the source pod's agent (src = the pod, dst = the chosen
endpoint), "inbound" ones by the destination pod's agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DIRECTIONS = ("inbound", "outbound")
TCP_PROTOCOLS = ("tcp", "http1", "http2", "tls")
REQUEST_PROTOCOLS = ("http1", "http2", "grpc")

# The events below are made for every connection and request: plain slotted dataclasses, since
# a frozen one's __init__ pays an object.__setattr__ call per field. Nobody changes them.


@dataclass(frozen=True, slots=True)
class Peer:
    """One side of a connection as the mesh knows it."""

    ip: str
    namespace: str = ""
    pod: str = ""
    workload_kind: str = ""  # e.g. "Deployment"
    workload: str = ""  # e.g. "web"
    service: str = ""  # destination Service name (outbound to a VIP), else ""
    identity: str = ""  # SPIFFE ID when known (mTLS peer or the table), else ""


@dataclass(slots=True)
class TcpOpened:
    conn_id: int
    direction: str  # "inbound" | "outbound"
    src: Peer
    dst: Peer
    protocol: str  # "tcp" | "http1" | "http2" | "tls"
    tls: bool
    at: float  # time.time()


@dataclass(slots=True)
class TcpClosed:
    conn_id: int
    direction: str
    src: Peer
    dst: Peer
    protocol: str
    tls: bool
    read_bytes: int  # bytes read from the side that opened the connection (src)
    write_bytes: int  # bytes written back to it
    duration_s: float
    error: str = ""


@dataclass(slots=True)
class RequestObserved:
    """One HTTP/1 request/response or one HTTP/2 stream, emitted when it ends."""

    req_id: int
    conn_id: int
    direction: str
    src: Peer
    dst: Peer
    protocol: str  # "http1" | "http2" | "grpc"
    tls: bool
    method: str
    authority: str
    path: str
    status: int | None
    grpc_status: int | None
    classification: str  # "success" | "failure"
    reset: bool
    latency_first_byte_s: float | None
    latency_s: float
    request_bytes: int
    response_bytes: int
    started_at: float  # time.time()


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A tapped request's head was read (sent only while someone taps the pair: see tapping())."""

    req_id: int
    conn_id: int
    direction: str
    src: Peer
    dst: Peer
    protocol: str
    tls: bool
    method: str
    authority: str
    path: str
    at: float  # time.time()
    src_port: int = 0
    dst_port: int = 0
    route: str = ""  # the mesh route rule that carried it (the L7 path), "" when none


@dataclass(slots=True)
class AuthzDenied:
    """A connection (protocol "tcp") or request the destination's policy denied; the agent
    answered it itself and the app never saw it."""

    conn_id: int
    direction: str
    src: Peer
    dst: Peer
    tls: bool
    policy: str  # namespace/name of the InboundPolicy
    reason: str
    protocol: str  # "tcp" | "http1" | "http2" | "grpc"
    at: float
    method: str = ""
    authority: str = ""
    path: str = ""
    status: int = 0  # what the agent answered: 403, or 200 with grpc_status 7
    grpc_status: int | None = None
    src_port: int = 0
    dst_port: int = 0


@dataclass(slots=True)
class RouteObserved:
    """One request the client's L7 path answered, with the mesh route rule that carried it."""

    src: Peer  # the client pod
    service_namespace: str  # the Service the client called: the routes' parent
    service: str
    route: str  # namespace/name/rule, or "default" when no route rule took the request
    protocol: str  # "http1" | "http2" | "grpc"
    status: int  # 0: no response (reset)
    grpc_status: int | None
    success: bool
    latency_s: float
    retries: int


class ObservationSink(Protocol):
    def tcp_opened(self, ev: TcpOpened) -> None: ...

    def tcp_closed(self, ev: TcpClosed) -> None: ...

    def request(self, ev: RequestObserved) -> None: ...

    def tapping(self, src: Peer, dst: Peer) -> bool:
        """Cheap: is anyone tapping this pair? Gates the two calls below."""
        ...

    def request_started(self, ev: RequestStarted) -> None: ...

    def response_started(self, req_id: int, status: int | None, at: float) -> None: ...

    def authz_denied(self, ev: AuthzDenied) -> None: ...

    def route(self, ev: RouteObserved) -> None: ...


class NullSink:
    """Sink that drops everything; the default until a real one is wired in."""

    def tcp_opened(self, ev: TcpOpened) -> None:
        pass

    def tcp_closed(self, ev: TcpClosed) -> None:
        pass

    def request(self, ev: RequestObserved) -> None:
        pass

    def tapping(self, src: Peer, dst: Peer) -> bool:
        return False

    def request_started(self, ev: RequestStarted) -> None:
        pass

    def response_started(self, req_id: int, status: int | None, at: float) -> None:
        pass

    def authz_denied(self, ev: AuthzDenied) -> None:
        pass

    def route(self, ev: RouteObserved) -> None:
        pass
