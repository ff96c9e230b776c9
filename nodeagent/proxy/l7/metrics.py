"""The L7 path's per-request outcomes as observation events.

Each outcome becomes, once:
- a `RouteObserved` (the `route` label: namespace/name/rule of the mesh route rule, "default"
  when none took the request), counted by the agent's aggregate for /metrics
  (`route_request_total`, ...) and the telemetry reports (`nodemesh routes`);
- a `RequestObserved` of the client pod's outbound request to the endpoint that answered (the
  request metrics behind `stat`, `edges`, `top`), which the relay's pass observed while the
  L7 path dialled its upstream through the outbound listener;
- while someone taps the pair, the request's tap events (req with the route, rsp, end), sent
  when the request is over.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from nodeagent.observe.events import (
    ObservationSink,
    Peer,
    RequestObserved,
    RequestStarted,
    RouteObserved,
)
from nodeagent.protocol.classify import classify
from nodeagent.proxy.l7.http1 import Outcome
from nodemesh.routing.model import DEFAULT_ROUTE

# Request ids of the L7 path, apart from the relay's (which count from 1).
_request_ids = itertools.count(1 << 61)


class RouteMetrics:
    """The observe callback of one client pod's L7 path. `dst(outcome)` is the endpoint that
    answered as a Peer, `tls(outcome)` whether it was reached over the mesh's mTLS."""

    def __init__(
        self,
        *,
        src: Callable[[], Peer],
        sink: ObservationSink,
        dst: Callable[[Outcome], Peer],
        tls: Callable[[Outcome], bool],
    ) -> None:
        self.src, self.sink, self.dst, self.tls = src, sink, dst, tls

    def observe(self, outcome: Outcome) -> None:
        src = self.src()
        route = event_of(outcome, src)
        self.sink.route(route)
        if outcome.head is None:
            return
        dst = self.dst(outcome)
        request = request_of(outcome, route, src, dst, self.tls(outcome), next(_request_ids))
        if self.sink.tapping(src, dst):
            self.sink.request_started(
                RequestStarted(
                    req_id=request.req_id,
                    conn_id=0,
                    direction="outbound",
                    src=src,
                    dst=dst,
                    protocol=request.protocol,
                    tls=request.tls,
                    method=request.method,
                    authority=request.authority,
                    path=request.path,
                    at=request.started_at,
                    route=route.route,
                )
            )
            first = outcome.first_byte_s if outcome.first_byte_s is not None else outcome.seconds
            self.sink.response_started(request.req_id, outcome.status, request.started_at + first)
        self.sink.request(request)


def event_of(outcome: Outcome, src: Peer) -> RouteObserved:
    grpc = outcome.protocol == "grpc"
    # A gRPC call that ended without a grpc-status (reset, cut off) failed, whatever its :status.
    failed_stream = grpc and outcome.grpc_status is None
    verdict = classify(
        outcome.status or None,
        grpc_status=outcome.grpc_status if grpc else None,
        stream_failed=failed_stream,
    )
    # Positional, in the field order, here and in request_of: keywords cost a dataclass
    # __init__ three times as much, for every request (test_obs_routes.py checks each field).
    return RouteObserved(
        src,  # src
        outcome.service.namespace,  # service_namespace
        outcome.service.name,  # service
        outcome.route or DEFAULT_ROUTE,  # route
        outcome.protocol,  # protocol
        outcome.status,  # status
        outcome.grpc_status if grpc else None,  # grpc_status
        verdict.success,  # success
        outcome.seconds,  # latency_s
        outcome.retries,  # retries
    )


def request_of(
    outcome: Outcome, route: RouteObserved, src: Peer, dst: Peer, tls: bool, req_id: int
) -> RequestObserved:
    head = outcome.head
    assert head is not None
    return RequestObserved(
        req_id,  # req_id
        0,  # conn_id
        "outbound",  # direction
        src,  # src
        dst,  # dst
        outcome.protocol,  # protocol
        tls,  # tls
        head.method,  # method
        head.authority,  # authority
        head.path,  # path
        outcome.status or None,  # status
        route.grpc_status,  # grpc_status
        "success" if route.success else "failure",  # classification
        outcome.status == 0,  # reset
        outcome.first_byte_s,  # latency_first_byte_s
        outcome.seconds,  # latency_s
        0,  # request_bytes
        outcome.response_bytes,  # response_bytes
        head.started_at,  # started_at
    )
