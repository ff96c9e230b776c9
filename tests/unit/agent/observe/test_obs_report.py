"""Telemetry reports: deltas since the last report, merged series, checked by the control
plane's own report parser, chunked under its limits; the agent's load from /proc."""

from __future__ import annotations

from pathlib import Path

from obs_fixtures import EMOJI_ID, WEB_ID, closed, emoji, opened, request, web

from controlplane.telemetry import parse_report
from nodeagent.observe.events import Peer
from nodeagent.observe.stats import load
from nodeagent.observe.stats.report import Load, take_reports
from nodeagent.observe.stats.series import Aggregate
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.histogram import RELATIVE_ERROR, LatencyHistogram

LOAD = Load(pods_enrolled=3, open_connections=1, cpu_seconds=1.5, rss_bytes=40 << 20)


def take(agg: Aggregate, **kw) -> list[pb.AgentReport]:
    return take_reports(
        agg, node="node1", version="0.1.0", load=LOAD, now_ms=1, interval_ms=1000, **kw
    )


def parsed(report: pb.AgentReport):
    return parse_report(report, encoded_size=report.ByteSize())


def test_a_report_holds_what_changed_and_the_control_plane_accepts_it() -> None:
    agg = Aggregate()
    for us in (900, 1500, 1500, 40_000):
        agg.request(request(web(), emoji(), first_byte_s=us / 1e6))
    agg.request(request(web(), emoji(), protocol="grpc", status=200, grpc_status=14))
    agg.tcp_opened(opened(1, web(), emoji()))
    agg.tcp_opened(opened(2, web(), emoji()))
    agg.tcp_closed(closed(1, web(), emoji(), read=300, write=5000))

    (report,) = take(agg)
    p = parsed(report)  # raises BadReport if the control plane would refuse it
    assert p.node == "node1" and p.load.pods_enrolled == 3
    by_status = {
        (k.protocol, k.status_code, k.grpc_status, k.success): (n, h) for k, n, h in p.requests
    }
    n, h = by_status[("http1", 200, None, True)]
    assert n == 4 and h.total == 4 and h.sum_us == 900 + 1500 + 1500 + 40_000
    assert by_status[("grpc", 200, 14, False)][0] == 1
    key = next(iter(p.requests))[0]
    assert (key.src.deployment, key.src.pod, key.src.identity) == ("web", "web-0", WEB_ID)
    assert (key.dst.deployment, key.dst.service, key.dst.identity) == (
        "emoji",
        "emoji-svc",
        EMOJI_ID,
    )
    ((tkey, counts),) = p.tcp
    assert (counts.opened, counts.closed, counts.read_bytes, counts.write_bytes) == (
        2,
        1,
        300,
        5000,
    )
    assert counts.open_connections == 1 and tkey.tls

    # Nothing new: the next report has no requests, and the open connection's gauge only.
    (quiet,) = take(agg)
    assert not quiet.requests
    assert [(s.opened, s.closed, s.open_connections) for s in quiet.tcp] == [(0, 0, 1)]

    agg.request(request(web(), emoji(), first_byte_s=0.003))
    agg.tcp_closed(closed(2, web(), emoji(), read=1, write=2))
    (third,) = take(agg)
    assert [s.responses for s in third.requests] == [1]
    assert [(s.closed, s.open_connections) for s in third.tcp] == [(1, 0)]
    assert take(agg)[0].tcp == []  # closed and reported: it stops appearing


def test_series_the_proto_cannot_tell_apart_are_merged() -> None:
    agg = Aggregate()
    # Same peers, different authorities (a /metrics label, not a telemetry key).
    for authority, latency in (("a:80", 0.001), ("b:80", 0.002), ("b:80", 0.004)):
        agg.request(request(web(), emoji(), authority=authority, first_byte_s=latency))
    # A StatefulSet is not a Deployment: its `deployment` stays empty.
    sts = Peer("10.244.2.50", "emojivoto", "db-0", "StatefulSet", "db", "db-svc")
    agg.request(request(web(), sts))
    (report,) = take(agg)
    by_dst = {s.dst.pod: s for s in report.requests}
    merged = by_dst["emoji-0"]
    assert merged.responses == 3
    h = LatencyHistogram.from_sparse(merged.latency.buckets, merged.latency.counts)
    assert h.total == 3 and abs(h.quantile(1.0) - 4000) <= 4000 * RELATIVE_ERROR
    assert by_dst["db-0"].dst.deployment == "" and by_dst["db-0"].dst.service == "db-svc"


def test_a_backlog_larger_than_a_report_is_split_and_an_outage_interval_clamped() -> None:
    agg = Aggregate()
    for i in range(25):
        agg.request(request(web(i), emoji()))
    reports = take_reports(
        agg, node="node1", version="v", load=LOAD, now_ms=1, interval_ms=3_600_000, max_series=10
    )
    assert [len(r.requests) for r in reports] == [10, 10, 5]
    assert all(r.interval_ms == 60_000 for r in reports)
    for r in reports:
        parsed(r)
    assert sum(s.responses for r in reports for s in r.requests) == 25


def test_out_of_range_statuses_are_made_acceptable() -> None:
    agg = Aggregate()
    agg.request(request(web(), emoji(), protocol="grpc", status=200, grpc_status=99))
    agg.request(request(web(), emoji(), status=1234))
    (report,) = take(agg)
    p = parsed(report)
    assert sorted((k.status_code, k.grpc_status) for k, _, _ in p.requests) == [(0, None), (200, 2)]


def test_load_reads_cpu_and_rss_of_this_process(tmp_path: Path) -> None:
    assert load.cpu_seconds() > 0
    assert load.rss_bytes() > 10 << 20
    # A command name with spaces and parentheses does not shift the fields.
    fields = ["S"] + ["0"] * 10 + ["250", "150"] + ["0"] * 30
    line = "1234 (evil ) name (x)) " + " ".join(fields)
    assert load.parse_cpu_seconds(line) == (250 + 150) / load._TICKS
    proc = tmp_path / "proc"
    proc.mkdir()
    assert load.cpu_seconds(proc) == 0.0 and load.rss_bytes(proc) == 0


def test_reports_name_the_enrolled_pods_and_the_store_keeps_them() -> None:
    from controlplane.telemetry import TelemetryStore
    from controlplane.telemetry_port import StoreTelemetry

    now = [1_000_000.0]
    store = TelemetryStore(clock=lambda: now[0])
    enrolled = (("shop", "web-1", "uid-1"), ("shop", "api-1", "uid-2"))
    load_ = Load(
        pods_enrolled=2, open_connections=0, cpu_seconds=1.0, rss_bytes=1, enrolled=enrolled
    )
    (report,) = take_reports(
        Aggregate(), node="node1", version="t", load=load_, now_ms=1, interval_ms=1000
    )
    store.ingest(parse_report(report, encoded_size=report.ByteSize()))
    port = StoreTelemetry(store)
    assert port.enrolled_pods() == set(enrolled)
    now[0] += 60  # the agent went quiet: its pods are no longer meshed by anyone
    assert port.enrolled_pods() == set()
