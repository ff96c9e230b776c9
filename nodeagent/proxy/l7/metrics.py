"""Per-route request metrics of the L7 path (the `route` label: HTTPRoute name and rule)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from nodeagent.observe.metrics import REGISTRY

_LABELS = ["direction", "namespace", "pod", "route", "status_code"]
ROUTE_REQUESTS = Counter(
    "route_request",
    "Requests answered on the L7 path, by route (name/rule) and status",
    _LABELS,
    registry=REGISTRY,
)
ROUTE_RETRIES = Counter(
    "route_retry",
    "Retries sent on the L7 path (within the route's retry budget)",
    ["direction", "namespace", "pod", "route"],
    registry=REGISTRY,
)
ROUTE_LATENCY = Histogram(
    "route_response_latency_ms",
    "Time from the request to the end of the response on the L7 path, milliseconds",
    ["direction", "namespace", "pod", "route"],
    buckets=(1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000),
    registry=REGISTRY,
)


class RouteMetrics:
    """The observe callback of one client pod's L7 path."""

    def __init__(self, *, namespace: str, pod: str) -> None:
        self.namespace, self.pod = namespace, pod

    def observe(self, route: str, status: int, seconds: float, retries: int) -> None:
        label = route or "default"
        ROUTE_REQUESTS.labels("outbound", self.namespace, self.pod, label, str(status)).inc()
        ROUTE_LATENCY.labels("outbound", self.namespace, self.pod, label).observe(seconds * 1000)
        if retries:
            ROUTE_RETRIES.labels("outbound", self.namespace, self.pod, label).inc(retries)
