"""The Telemetry gRPC service (grpc.aio): agents stream reports in, the store takes them.

Wire it with `TelemetryService(store=..., is_known_node=..., registry=...).add_to(server)` on a
server whose AgentAuthInterceptor (controlplane.agent_auth) says which agent calls (with
`refused={SERVICE: service.refused}` to count refusals), and give the server
`options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]` so an oversized report reaches
the service (and is refused and counted) instead of only failing in the transport. Requests are
deserialized here, not by grpc, so a garbled message is refused with an ack rather than ending the
stream.
Metrics: `nodemesh_telemetry_reports_total{result, reason}`, and from the store
`nodemesh_telemetry_series`, `nodemesh_telemetry_cells`, `nodemesh_telemetry_aggregate_cells`,
`nodemesh_telemetry_series_evicted_total`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.agent_auth import PEER_REPLICA, calling_agent
from controlplane.telemetry.ingest import PEER, StoreGauges, store_gauges, take
from controlplane.telemetry.report import MAX_REPORT_BYTES
from controlplane.telemetry.store import TelemetryStore
from nodemesh.api import telemetry_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "nodemesh.telemetry.v1.Telemetry"
METHOD = f"/{SERVICE}/Report"
MAX_RECEIVE_BYTES = 2 * MAX_REPORT_BYTES
assert PEER == PEER_REPLICA.node  # noqa: S101 (the two modules name the same caller)

_registered: dict[int, tuple[CollectorRegistry, Counter, list[Collector]]] = {}


class _StoreCollector(Collector):
    def __init__(self, gauges: Callable[[], StoreGauges]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        series, cells, aggregate_cells, evicted = self.gauges()
        yield GaugeMetricFamily(
            "nodemesh_telemetry_series", "Series held by the telemetry store", value=series
        )
        yield GaugeMetricFamily(
            "nodemesh_telemetry_cells", "Series x 10 s bucket cells held", value=cells
        )
        yield GaugeMetricFamily(
            "nodemesh_telemetry_aggregate_cells",
            "Resource x 10 s bucket cells of the per-resource aggregates (Stat reads these)",
            value=aggregate_cells,
        )
        yield CounterMetricFamily(
            "nodemesh_telemetry_series_evicted",
            "Series dropped (least recently updated first) to stay within the memory bound",
            value=evicted,
        )


def _metrics(registry: CollectorRegistry, gauges: Callable[[], StoreGauges]) -> Counter:
    held = _registered.get(id(registry))
    if held is None or held[0] is not registry:
        counter = Counter(
            "nodemesh_telemetry_reports",
            "Agent reports received, by result and refusal reason",
            ["result", "reason"],
            registry=registry,
        )
        held = _registered[id(registry)] = (registry, counter, [])
    # One store collector per registry: a new service (a restart in tests) replaces the old.
    for old in held[2]:
        registry.unregister(old)
    collector = _StoreCollector(gauges)
    registry.register(collector)
    held[2][:] = [collector]
    return held[1]


class TelemetryService:
    def __init__(
        self,
        *,
        store: TelemetryStore,
        is_known_node: Callable[[str], bool],
        registry: CollectorRegistry = REGISTRY,
        forward: Callable[[bytes], None] | None = None,
    ) -> None:
        self.store = store
        self.is_known_node = is_known_node
        self.reports = _metrics(registry, partial(store_gauges, store))
        # Replicas: a report from one of our agents goes on to the peers (`forward`); one a
        # peer forwarded (the agent port's interceptor admitted it as PEER) is the agent's own
        # word, checked there.
        self.forward = forward

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            self.Report,
            request_deserializer=lambda raw: raw,  # parsed in Report, where errors are answered
            response_serializer=pb.ReportAck.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Report": handler}),)
        )

    def refused(self, reason: str, message: str) -> None:
        """The agent port's interceptor refused a stream before it reached Report."""
        if reason == "unauthenticated":
            self.reports.labels("refused", "unauthenticated").inc()
            log.warning("telemetry: refused a stream: %s", message)

    def handle(self, raw: bytes, *, authenticated_node: str | None) -> pb.ReportAck:
        """Take or refuse one serialized report; the answer says which and why."""
        ack, reason = take(
            self.store, raw, authenticated_node=authenticated_node, is_known_node=self.is_known_node
        )
        self.settled(raw, ack, reason, authenticated_node=authenticated_node)
        return ack

    def settled(
        self, raw: bytes, ack: pb.ReportAck, reason: str, *, authenticated_node: str | None
    ) -> None:
        """Count a report the store took or refused; forward a taken one of our agents."""
        if not ack.accepted:
            self.reports.labels("refused", reason).inc()
            return
        self.reports.labels("accepted", "").inc()
        if self.forward is not None and authenticated_node != PEER:
            self.forward(raw)

    async def Report(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReportAck]:
        caller = calling_agent()
        node = caller.node if caller else None
        async for raw in request_iterator:
            yield self.handle(raw, authenticated_node=node)
