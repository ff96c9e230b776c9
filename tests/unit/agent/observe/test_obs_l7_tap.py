"""Requests answered by the client's L7 path, as `nodemesh tap` and the request metrics see them:
one request observation per request (the upstream is dialled directly, so no second pass
observes it again), and while someone taps the pair, its req (with the route), rsp and end."""

from __future__ import annotations

from nodeagent.observe.events import Peer
from nodeagent.observe.sink import AgentSink
from nodeagent.proxy.l7.http1 import Outcome, RequestHead
from nodeagent.proxy.l7.metrics import RouteMetrics
from nodemesh.api import tap_pb2 as pb
from nodemesh.cli.tap import line
from nodemesh.model import ServiceKey

WEB = ServiceKey("emojivoto", "web")
VOTER = Peer("10.244.1.7", "emojivoto", "vote-bot-1", "Deployment", "vote-bot")
WEB_POD = Peer("10.244.2.9", "emojivoto", "web-1", "Deployment", "web", "web")


def _tapping(sink: AgentSink) -> list[pb.TapEvent]:
    events: list[pb.TapEvent] = []
    sink.taps.emit = events.append
    sink.taps.start(
        pb.TapSubscription(
            id="t1", pods=[pb.PodRef(namespace="emojivoto", name="vote-bot-1")], max_rps=100
        )
    )
    return events


def _metrics(sink: AgentSink) -> RouteMetrics:
    return RouteMetrics(src=lambda: VOTER, sink=sink, dst=lambda o: WEB_POD, tls=lambda o: True)


def test_a_tapped_l7_request_shows_method_path_status_latency_and_route() -> None:
    sink = AgentSink(node="node1")
    events = _tapping(sink)
    head = RequestHead("GET", "web:80", "/api/vote?choice=cat", 1_700_000_000.0)
    _metrics(sink).observe(
        Outcome(WEB, "emojivoto/web-split/0", "http1", 503, 0.25, retries=1, head=head,
                first_byte_s=0.2, response_bytes=12)
    )  # fmt: skip
    kinds = [ev.WhichOneof("kind") for ev in events]
    assert kinds == ["req", "rsp", "end"], events
    req, rsp, end = events
    assert req.direction == pb.OUTBOUND and req.tls
    assert (req.src.pod, req.dst.pod, req.dst.service) == ("vote-bot-1", "web-1", "web")
    assert (req.req.method, req.req.path, req.req.authority) == (
        "GET", "/api/vote?choice=cat", "web:80",
    )  # fmt: skip
    assert req.req.route == "emojivoto/web-split/0"
    assert rsp.rsp.status == 503 and rsp.rsp.since_request_us == 200_000
    assert end.end.since_request_us == 250_000 and end.end.response_bytes == 12
    assert len({ev.request_id for ev in events}) == 1
    shown = line(req)
    assert ":method=GET" in shown and ":path=/api/vote?choice=cat" in shown
    assert "route=emojivoto/web-split/0" in shown
    assert "latency=200000us" in line(rsp) and ":status=503" in line(rsp)


def test_each_l7_request_is_observed_once_and_untapped_ones_send_nothing() -> None:
    sink = AgentSink(node="node1")
    events: list[pb.TapEvent] = []
    sink.taps.emit = events.append
    metrics = _metrics(sink)
    head = RequestHead("GET", "web:80", "/", 1_700_000_000.0)
    for _ in range(5):
        metrics.observe(Outcome(WEB, "", "http1", 200, 0.01, head=head, first_byte_s=0.01))
    assert events == []  # nobody taps
    counted = {(s.direction, s.dst.service): s.count for s in sink.aggregate.requests.values()}
    assert counted == {("outbound", "web"): 5}
