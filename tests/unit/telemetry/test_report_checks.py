"""Report checks refuse garbled input with a reason; arbitrary bytes never crash the service."""

import pytest
from agent_reports import ReportBuilder
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from controlplane.telemetry import BadReport, TelemetryStore, parse_report
from controlplane.telemetry.service import TelemetryService
from nodemesh.api import telemetry_pb2 as pb


def _report() -> pb.AgentReport:
    agent = ReportBuilder(node="node1")
    agent.request([100, 200])
    return agent.report()


def _breakers():
    def direction(r):
        r.requests[0].direction = 7

    def protocol(r):
        r.requests[0].protocol = pb.PROTOCOL_UNSPECIFIED

    def classification(r):
        r.requests[0].classification = pb.CLASSIFICATION_UNSPECIFIED

    def grpc_status(r):
        r.requests[0].grpc_status = 99

    def long_name(r):
        r.requests[0].dst.pod = "p" * 300

    def nul(r):
        r.requests[0].src.namespace = "emoji\x00voto"

    def bucket(r):
        r.requests[0].latency.buckets[0] = 10**6

    def counts(r):
        r.requests[0].latency.counts.append(1)

    def cpu(r):
        r.load.cpu_seconds = float("nan")

    def node(r):
        r.node = ""

    def route_without_service(r):
        r.requests[0].route = "emojivoto/web-api/0"
        r.requests[0].dst.service = ""

    def long_route(r):
        r.requests[0].direction = pb.OUTBOUND
        r.requests[0].dst.service = "web"
        r.requests[0].route = "r" * 1000

    def series(r):
        r.tcp.extend(pb.TcpSeries(direction=pb.INBOUND) for _ in range(10_001))

    return [direction, protocol, classification, grpc_status, long_name, nul, bucket, counts,
            cpu, node, route_without_service, long_route, series]  # fmt: skip


@pytest.mark.parametrize("breaker", _breakers(), ids=lambda f: f.__name__)
def test_refuses_garbled_reports(breaker) -> None:
    report = _report()
    parse_report(report, encoded_size=report.ByteSize())  # fine before
    breaker(report)
    with pytest.raises(BadReport) as caught:
        parse_report(report, encoded_size=report.ByteSize())
    assert caught.value.reason in {"garbled", "oversized"} and str(caught.value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_get_an_answer(raw: bytes) -> None:
    store = TelemetryStore()
    service = TelemetryService(
        store=store,
        is_known_node=lambda n: True,
        registry=CollectorRegistry(),
    )
    ack = service.handle(raw, authenticated_node=None)
    assert ack.accepted == (store.stats.reports == 1)
    if not ack.accepted:
        assert ack.reason
