"""Tap subscriptions on the agent: matching, the per-tap rate limit on an injected clock, the
req/rsp/end events of admitted requests, stop, and silence when nobody taps."""

from __future__ import annotations

from obs_fixtures import emoji, request, web

from nodeagent.observe.events import Peer, RequestStarted
from nodeagent.observe.sink import AgentSink
from nodemesh.api import tap_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sink_with_clock() -> tuple[AgentSink, list[pb.TapEvent], Clock]:
    sink = AgentSink(node="node1")
    clock = Clock()
    sink.taps.clock = clock
    events: list[pb.TapEvent] = []
    sink.taps.emit = events.append
    return sink, events, clock


def subscription(
    sub_id: str = "tap-1", *, pods=(("emojivoto", "web-0"),), **kw
) -> pb.TapSubscription:
    return pb.TapSubscription(
        id=sub_id,
        resource=pb.ResourceRef(kind="deployment", namespace="emojivoto", name="web"),
        pods=[pb.PodRef(namespace=ns, name=name) for ns, name in pods],
        max_rps=kw.pop("max_rps", 100.0),
        **kw,
    )


def run_request(sink: AgentSink, src: Peer, dst: Peer, *, direction="outbound", method="GET",
                path="/api/list", req_id=1, status=200) -> None:  # fmt: skip
    """What the data plane does for one request: ask tapping(), then the three calls."""
    ev = request(src, dst, direction=direction, method=method, path=path, req_id=req_id,
                 status=status, latency_s=0.004)  # fmt: skip
    if sink.tapping(src, dst):
        sink.request_started(RequestStarted(ev.req_id, 1, direction, src, dst, ev.protocol, ev.tls,
                                            method, ev.authority, path, ev.started_at))  # fmt: skip
        sink.response_started(ev.req_id, status, ev.started_at + 0.001)
    sink.request(ev)


def test_nobody_tapping_means_no_events_and_a_false_tapping() -> None:
    sink, events, _ = sink_with_clock()
    assert not sink.tapping(web(), emoji())
    run_request(sink, web(), emoji())
    assert events == []


def test_matching_requests_produce_req_rsp_end_with_peers_and_timing() -> None:
    sink, events, _ = sink_with_clock()
    sink.taps.start(subscription())
    run_request(sink, web(), emoji(), req_id=7, status=503)
    assert [e.WhichOneof("kind") for e in events] == ["req", "rsp", "end"]
    req, rsp, end = events
    assert {e.request_id for e in events} == {7} and {e.subscription_id for e in events} == {
        "tap-1"
    }
    assert req.direction == pb.OUTBOUND and req.node == "node1" and req.tls
    assert (req.src.pod, req.src.workload_kind, req.dst.pod, req.dst.service) == (
        "web-0", "deployment", "emoji-0", "emoji-svc")  # fmt: skip
    assert req.src.ip == "10.244.1.10" and req.dst.identity.endswith("/sa/emoji")
    assert (req.req.method, req.req.path, req.req.protocol) == ("GET", "/api/list", "HTTP/1.1")
    assert rsp.rsp.status == 503 and rsp.rsp.since_request_us == 1000
    assert end.end.since_request_us == 4000 and end.end.response_bytes == 100
    assert end.timestamp_ms > req.timestamp_ms


def test_filters_pods_direction_destination_method_and_path() -> None:
    sink, events, _ = sink_with_clock()
    to_emoji = subscription(
        to=pb.ResourceRef(kind="deployment", namespace="emojivoto", name="emoji"),
        to_addresses=[emoji().ip],
        method="POST",
        path_prefix="/emojivoto.v1",
    )
    sink.taps.start(to_emoji)
    other = Peer("10.244.3.3", "emojivoto", "voting-0", "Deployment", "voting")
    assert not sink.tapping(web(), other)  # not to `to`
    assert not sink.tapping(web(1), emoji())  # web-1 is on another node: not listed
    run_request(sink, web(), emoji(), method="GET", path="/emojivoto.v1/List", req_id=1)
    run_request(sink, web(), emoji(), method="POST", path="/other", req_id=2)
    # Inbound to web from emoji is not web's traffic *to* emoji.
    run_request(sink, emoji(), web(), direction="inbound", method="POST",
                path="/emojivoto.v1/List", req_id=3)  # fmt: skip
    run_request(sink, web(), emoji(), method="post", path="/emojivoto.v1/List", req_id=4)
    assert {e.request_id for e in events} == {4}

    # Without `to`, requests coming *in* to a tapped pod are shown too.
    sink.taps.stop(to_emoji.id)
    sink.taps.start(subscription("tap-2"))
    events.clear()
    run_request(sink, emoji(), web(), direction="inbound", req_id=5)
    assert {(e.request_id, e.direction) for e in events} == {(5, pb.INBOUND)}


def test_rate_limit_per_subscription_and_admitted_requests_complete() -> None:
    sink, events, clock = sink_with_clock()
    sink.taps.start(subscription(max_rps=5))
    for rid in range(50):  # a burst within one instant: the bucket holds 5
        run_request(sink, web(), emoji(), req_id=rid)
    reqs = [e.request_id for e in events if e.WhichOneof("kind") == "req"]
    assert reqs == [0, 1, 2, 3, 4]
    for rid in reqs:
        assert [e.WhichOneof("kind") for e in events if e.request_id == rid] == [
            "req",
            "rsp",
            "end",
        ]
    assert sink.taps.rate_limited == 45
    # One second later five more fit; a tenth of a second after, none.
    clock.now += 1.0
    for rid in range(100, 110):
        run_request(sink, web(), emoji(), req_id=rid)
    clock.now += 0.1
    run_request(sink, web(), emoji(), req_id=200)
    later = {e.request_id for e in events if e.WhichOneof("kind") == "req" and e.request_id >= 100}
    assert later == {100, 101, 102, 103, 104}


def test_restarting_a_tap_with_new_pods_keeps_its_bucket_and_stop_forgets_it() -> None:
    sink, events, _ = sink_with_clock()
    sink.taps.start(subscription(max_rps=1))
    run_request(sink, web(), emoji(), req_id=1)
    sink.taps.start(subscription(max_rps=1, pods=(("emojivoto", "web-0"), ("emojivoto", "web-1"))))
    run_request(sink, web(1), emoji(), req_id=2)  # matched now, but the bucket is empty
    assert {e.request_id for e in events} == {1}
    sink.taps.stop("tap-1")
    assert not sink.tapping(web(), emoji())
    events.clear()
    run_request(sink, web(), emoji(), req_id=3)
    assert events == []


def test_a_request_started_before_the_tap_emits_nothing_at_its_end() -> None:
    sink, events, _ = sink_with_clock()
    ev = request(web(), emoji(), req_id=42)
    sink.taps.start(subscription())
    sink.response_started(42, 200, 0.0)
    sink.request(ev)
    assert events == []
