"""The `route` label on the agent's side: the L7 path's outcomes counted per mesh route rule for
/metrics (route_request_total, route_response_total, route_retry_total,
route_response_latency_ms) and reported once to the control plane as RequestSeries.route."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from nodeagent.observe.events import NullSink, Peer
from nodeagent.observe.stats.report import Load, take_reports
from nodeagent.observe.stats.series import Aggregate
from nodeagent.proxy.l7.http1 import Outcome, RequestHead
from nodeagent.proxy.l7.metrics import RouteMetrics, event_of, request_of
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.model import ServiceKey

WEB = ServiceKey("emojivoto", "web")
VOTER = Peer("10.244.1.7", "emojivoto", "vote-bot-1", "Deployment", "vote-bot")
WEB_POD = Peer("10.244.2.9", "emojivoto", "web-1", "Deployment", "web", "web")


class _Wrap(Collector):
    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg

    def collect(self):  # type: ignore[no-untyped-def]
        return self.agg.routes.collect()


class _RoutesOnly(NullSink):
    def __init__(self, agg: Aggregate) -> None:
        self.route = agg.routes.add  # type: ignore[method-assign]


def _feed(agg: Aggregate) -> None:
    metrics = RouteMetrics(
        src=lambda: VOTER, sink=_RoutesOnly(agg), dst=lambda o: WEB_POD, tls=lambda o: True
    )
    for _ in range(3):
        metrics.observe(Outcome(WEB, "emojivoto/web-split/0", "http1", 200, 0.004, retries=1))
    metrics.observe(Outcome(WEB, "emojivoto/web-split/0", "http1", 503, 0.02))
    metrics.observe(Outcome(WEB, "", "http1", 404, 0.001))  # no rule matched


def test_route_metrics_carry_the_route_and_the_service_called() -> None:
    agg = Aggregate()
    _feed(agg)
    reg = CollectorRegistry()
    reg.register(_Wrap(agg))
    lines = generate_latest(reg).decode().splitlines()
    requests = [ln for ln in lines if ln.startswith("route_request_total")]
    assert len(requests) == 2
    split = next(ln for ln in requests if 'route="emojivoto/web-split/0"' in ln)
    assert 'dst_service="web"' in split and 'dst_namespace="emojivoto"' in split
    assert 'deployment="vote-bot"' in split and split.endswith(" 4.0")
    assert any('route="default"' in ln and ln.endswith(" 1.0") for ln in requests)
    failed = [ln for ln in lines if ln.startswith("route_response_total") and "failure" in ln]
    assert len(failed) == 1 and 'status_code="503"' in failed[0]
    (retries,) = [ln for ln in lines if ln.startswith("route_retry_total") and "split" in ln]
    assert retries.endswith(" 3.0")
    assert any(
        ln.startswith("route_response_latency_ms_bucket") and 'le="5"' in ln and "split" in ln
        and ln.endswith(" 3.0")
        for ln in lines
    )  # fmt: skip


def test_route_series_go_to_the_control_plane_once() -> None:
    agg = Aggregate()
    _feed(agg)
    load = Load(0, 0, 0.0, 0)
    (report,) = take_reports(agg, node="n1", version="t", load=load, now_ms=0, interval_ms=1000)
    routed = {(s.route, s.status_code): s for s in report.requests if s.route}
    assert set(routed) == {("emojivoto/web-split/0", 200), ("emojivoto/web-split/0", 503),
                           ("default", 404)}  # fmt: skip
    ok = routed[("emojivoto/web-split/0", 200)]
    assert ok.responses == 3 and ok.classification == pb.SUCCESS
    assert (
        ok.direction == pb.OUTBOUND
        and ok.dst.service == "web"
        and ok.dst.namespace == WEB.namespace
    )
    assert ok.src.deployment == "vote-bot" and sum(ok.latency.counts) == 3
    assert routed[("emojivoto/web-split/0", 503)].classification == pb.FAILURE
    # Reported once: the next report holds no route series.
    (again,) = take_reports(agg, node="n1", version="t", load=load, now_ms=0, interval_ms=1000)
    assert not [s for s in again.requests if s.route]


def test_grpc_outcomes_are_classified_by_grpc_status() -> None:
    unavailable = event_of(Outcome(WEB, "r", "grpc", 200, 0.01, grpc_status=14), VOTER)
    ok = event_of(Outcome(WEB, "r", "grpc", 200, 0.01, grpc_status=0), VOTER)
    cut = event_of(Outcome(WEB, "r", "grpc", 200, 0.01), VOTER)  # no trailers: broken off
    assert (unavailable.success, ok.success, cut.success) == (False, True, False)


def test_a_client_pod_that_left_is_forgotten_after_the_grace() -> None:
    agg = Aggregate()
    _feed(agg)
    load = Load(0, 0, 0.0, 0)
    take_reports(agg, node="n1", version="t", load=load, now_ms=0, interval_ms=1000)
    assert agg.routes.table
    known = {("emojivoto", "other")}  # vote-bot-1 is gone from the table
    assert agg.forget_gone(known, now=100.0, grace=120.0) == 0  # within the grace
    assert agg.forget_gone(known, now=221.0, grace=120.0) == 3
    assert not agg.routes.table


def test_the_route_and_request_events_have_every_field_in_its_place() -> None:
    """event_of and request_of build their events positionally (it is cheaper): by name."""
    head = RequestHead("POST", "web:8080", "/api/vote?x=1", 1700000000.5)
    outcome = Outcome(
        WEB, "emojivoto/web-split/1", "grpc", 200, 0.25, retries=2, grpc_status=14,
        head=head, first_byte_s=0.125, response_bytes=77,
    )  # fmt: skip
    route = event_of(outcome, VOTER)
    assert (route.src, route.service_namespace, route.service) == (VOTER, "emojivoto", "web")
    assert (route.route, route.protocol, route.status) == ("emojivoto/web-split/1", "grpc", 200)
    assert (route.grpc_status, route.success, route.latency_s, route.retries) == (
        14, False, 0.25, 2,
    )  # fmt: skip
    req = request_of(outcome, route, VOTER, WEB_POD, True, 99)
    assert (req.req_id, req.conn_id, req.direction) == (99, 0, "outbound")
    assert (req.src, req.dst, req.protocol, req.tls) == (VOTER, WEB_POD, "grpc", True)
    assert (req.method, req.authority, req.path) == ("POST", "web:8080", "/api/vote?x=1")
    assert (req.status, req.grpc_status, req.classification, req.reset) == (
        200, 14, "failure", False,
    )  # fmt: skip
    assert (req.latency_first_byte_s, req.latency_s) == (0.125, 0.25)
    assert (req.request_bytes, req.response_bytes, req.started_at) == (0, 77, 1700000000.5)
    reset = request_of(
        Outcome(WEB, "", "http1", 0, 0.5, head=head), route, VOTER, WEB_POD, False, 1
    )
    assert (reset.status, reset.reset, reset.latency_first_byte_s) == (None, True, None)
