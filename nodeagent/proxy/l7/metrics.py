"""The L7 path's per-request outcomes as route events for the observation sink.

Each outcome becomes a `RouteObserved` (the `route` label: namespace/name/rule of the mesh route
rule, "default" when none took the request), counted by the agent's aggregate for /metrics
(`route_request_total`, ...) and the telemetry reports (`nodemesh routes`).
"""

from __future__ import annotations

from collections.abc import Callable

from nodeagent.observe.events import Peer, RouteObserved
from nodeagent.protocol.classify import classify
from nodeagent.proxy.l7.http1 import Outcome
from nodemesh.routing.model import DEFAULT_ROUTE


class RouteMetrics:
    """The observe callback of one client pod's L7 path."""

    def __init__(self, *, src: Callable[[], Peer], emit: Callable[[RouteObserved], None]) -> None:
        self.src, self.emit = src, emit

    def observe(self, outcome: Outcome) -> None:
        self.emit(event_of(outcome, self.src()))


def event_of(outcome: Outcome, src: Peer) -> RouteObserved:
    grpc = outcome.protocol == "grpc"
    # A gRPC call that ended without a grpc-status (reset, cut off) failed, whatever its :status.
    failed_stream = grpc and outcome.grpc_status is None
    verdict = classify(
        outcome.status or None,
        grpc_status=outcome.grpc_status if grpc else None,
        stream_failed=failed_stream,
    )
    return RouteObserved(
        src=src,
        service_namespace=outcome.service.namespace,
        service=outcome.service.name,
        route=outcome.route or DEFAULT_ROUTE,
        protocol=outcome.protocol,
        status=outcome.status,
        grpc_status=outcome.grpc_status if grpc else None,
        success=verdict.success,
        latency_s=outcome.seconds,
        retries=outcome.retries,
    )
