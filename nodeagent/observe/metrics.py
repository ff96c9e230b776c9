"""The agent's Prometheus metrics, with Linkerd-compatible names for the per-pod TCP counters."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodeagent.protocol.detect import ServerFirstMemory

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# The relay still counts into these per-pod tcp_* counters (PodTcpStats), but /metrics shows
# the tcp_* families of the ObservationSink's aggregate (nodeagent.observe.stats.exposition), which
# carry Linkerd's full label set; the two cannot both be registered under the same names, so
# these stay unexposed. Setting this True brings the old per-pod ones back instead.
LEGACY_TCP_COUNTERS = False
_TCP_REGISTRY = REGISTRY if LEGACY_TCP_COUNTERS else None

_POD = ["direction", "namespace", "pod"]
TCP_OPEN = Counter("tcp_open", "TCP connections opened", _POD, registry=_TCP_REGISTRY)
TCP_CLOSE = Counter("tcp_close", "TCP connections closed", _POD, registry=_TCP_REGISTRY)
TCP_READ = Counter(
    "tcp_read_bytes", "Bytes read from the accepted connection's peer", _POD, registry=_TCP_REGISTRY
)
TCP_WRITE = Counter(
    "tcp_write_bytes",
    "Bytes written to the accepted connection's peer",
    _POD,
    registry=_TCP_REGISTRY,
)
TCP_OPEN_CONNECTIONS = Gauge(
    "tcp_open_connections", "TCP connections open now", _POD, registry=_TCP_REGISTRY
)
UPSTREAM_FAILURES = Counter(
    "nodemesh_agent_upstream_connect_failures",
    "Upstream connections that could not be opened",
    _POD,
    registry=REGISTRY,
)
TUNNEL_HANDSHAKES = Counter(
    "nodemesh_agent_tunnel_handshakes",
    "TLS handshakes of agent-to-agent tunnel connections, by side (client: this agent dialled)"
    " and kind (full, resumed)",
    ["side", "kind"],
    registry=REGISTRY,
)
TUNNEL_STREAMS = Counter(
    "nodemesh_agent_tunnel_streams",
    "App connections carried as streams of a shared (multiplexed) tunnel connection, by side",
    ["side"],
    registry=REGISTRY,
)
TUNNEL_CONNECTIONS = Gauge(
    "nodemesh_agent_tunnel_shared_connections",
    "Shared (multiplexed) tunnel connections open now, by side",
    ["side"],
    registry=REGISTRY,
)
_DNS_LABELS = ["namespace", "pod", "protocol", "result"]
DNS_QUERIES = Counter(
    "nodemesh_agent_dns_queries",
    "DNS queries of a pod, by transport and result (answered here or forwarded)",
    _DNS_LABELS,
    registry=REGISTRY,
)
ROUTER_ANSWERS = Counter(
    "nodemesh_agent_router_answers",
    "Router mode requests the agent answered itself instead of carrying (400, 403, 502)",
    ["status"],
    registry=REGISTRY,
)
H2_GOAWAYS = Counter(
    "nodemesh_agent_h2_goaways",
    "Relayed HTTP/2 connections to a Service told to go away (graceful GOAWAY), by why: its "
    "endpoint left, or the Service now balances per request",
    ["reason"],
    registry=REGISTRY,
)
PODS_ENROLLED = Gauge(
    "nodemesh_agent_pods_enrolled", "Pods with rules and listeners in place", registry=REGISTRY
)
CNI_REQUESTS = Counter(
    "nodemesh_agent_cni_requests",
    "Requests from nodemesh-cni by command and reply status",
    ["command", "status"],
    registry=REGISTRY,
)
CNI_ADD_SECONDS = Histogram(
    "nodemesh_agent_cni_add_seconds",
    "Time from an ADD request to its reply",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
DESTINATION_CONNECTED = Gauge(
    "nodemesh_agent_destination_connected",
    "1 while the destination stream from the control plane is up",
    registry=REGISTRY,
)
DESTINATION_UPDATES = Counter(
    "nodemesh_agent_destination_updates",
    "Destination updates applied, by kind",
    ["kind"],
    registry=REGISTRY,
)
CONNECTION_PROTOCOLS = Counter(
    "nodemesh_agent_connection_protocols",
    "Connections by the protocol detection settled on and why (cause: sniffed from the client's "
    "bytes, known_port, pod_opaque_port, source, remembered_server_first, server_spoke_first, "
    "incomplete_prefix, max_peek, closed); opaque ones carry no request metrics",
    ["direction", "protocol", "cause"],
    registry=REGISTRY,
)
SERVER_FIRST_REMEMBERED = Counter(
    "nodemesh_agent_server_first_remembered",
    "Destinations newly remembered as speaking first: every connection to one is relayed "
    "opaque (no request metrics) until the memory's TTL passes",
    registry=REGISTRY,
)


class ServerFirstCollector(Collector):
    """The destinations the agent relays opaque because their server spoke first, each with
    the seconds left before detection is tried again: what one connection's server changed
    for everyone else's connections is on /metrics, not only in a log line."""

    def __init__(self) -> None:
        self.memory: ServerFirstMemory | None = None

    def collect(self) -> Iterator[Metric]:
        live = self.memory.live(now=time.monotonic()) if self.memory is not None else []
        yield GaugeMetricFamily(
            "nodemesh_agent_server_first_destinations",
            "Destinations relayed opaque (no request metrics) because their server spoke first",
            value=len(live),
        )
        each = GaugeMetricFamily(
            "nodemesh_agent_server_first_destination",
            "Seconds until a destination remembered as speaking first gets detection again",
            labels=["ip", "port"],
        )
        for ip, port, left in sorted(live):
            each.add_metric([ip, str(port)], round(left, 1))
        yield each


SERVER_FIRST = ServerFirstCollector()
REGISTRY.register(SERVER_FIRST)


class _Unexposed:
    """Stands in for the legacy per-pod tcp_* children while they are not exposed: the relay
    still calls inc/dec, but nothing is kept (five label children per pod and direction cost
    about 10 KB a pod and a lock per call, for series nobody could read)."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass


_UNEXPOSED = _Unexposed()


class PodTcpStats:
    """The counters of one pod and direction, resolved once so the relay path only adds."""

    __slots__ = ("open", "close", "read", "write", "current", "failures")
    open: Counter | _Unexposed
    close: Counter | _Unexposed
    read: Counter | _Unexposed
    write: Counter | _Unexposed
    current: Gauge | _Unexposed

    def __init__(self, direction: str, namespace: str, pod: str) -> None:
        labels = (direction, namespace, pod)
        if LEGACY_TCP_COUNTERS:
            self.open = TCP_OPEN.labels(*labels)
            self.close = TCP_CLOSE.labels(*labels)
            self.read = TCP_READ.labels(*labels)
            self.write = TCP_WRITE.labels(*labels)
            self.current = TCP_OPEN_CONNECTIONS.labels(*labels)
        else:
            self.open = self.close = self.read = self.write = self.current = _UNEXPOSED
        self.failures = UPSTREAM_FAILURES.labels(*labels)


def _label_sets(metric: Counter, order: list[str], **wanted: str) -> set[tuple[str, ...]]:
    """The label values (in `order`, the metric's label names) of `metric`'s children whose
    labels include `wanted`: read from its samples, as prometheus-client's own
    remove_by_labels is newer than the version we require."""
    return {
        tuple(sample.labels[n] for n in order)
        for family in metric.collect()
        for sample in family.samples
        if all(sample.labels.get(k) == v for k, v in wanted.items())
    }


def forget_pod(namespace: str, pod: str) -> None:
    """Drop a pod's label sets: a deleted pod's series leave /metrics (a Prometheus scraping
    the agent would otherwise keep a dead pod's series, and the agent grow with pod churn)."""
    for direction in ("inbound", "outbound"):
        for metric in (TCP_OPEN, TCP_CLOSE, TCP_READ, TCP_WRITE, TCP_OPEN_CONNECTIONS):
            try:
                metric.remove(direction, namespace, pod)
            except KeyError:
                pass
        try:
            UPSTREAM_FAILURES.remove(direction, namespace, pod)
        except KeyError:
            pass
    # The DNS counters are by protocol and result too: every combination the pod used.
    for labels in _label_sets(DNS_QUERIES, _DNS_LABELS, namespace=namespace, pod=pod):
        try:
            DNS_QUERIES.remove(*labels)
        except KeyError:
            pass
