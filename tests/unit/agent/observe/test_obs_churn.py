"""Pod churn: the series of pods that left the cluster leave /metrics (after a grace that lets
Prometheus scrape their last values) instead of piling up for ever (issue 12 item 4)."""

from __future__ import annotations

from obs_fixtures import closed, opened, request, service, web
from prometheus_client import CollectorRegistry, generate_latest

from nodeagent.observe.events import Peer
from nodeagent.observe.sink import AgentSink
from nodeagent.observe.stats.exposition import AggregateCollector
from nodeagent.observe.stats.report import Load, take_reports
from nodeagent.upstream.table import DestinationTable
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as dpb

GRACE = 120.0
LOAD = Load(pods_enrolled=1, open_connections=0, cpu_seconds=0.0, rss_bytes=0)


def metrics_text(sink: AgentSink) -> str:
    registry = CollectorRegistry()
    registry.register(AggregateCollector(sink.aggregate))
    return generate_latest(registry).decode()


def publish(table: DestinationTable, revision: int, pods: list[str]) -> None:
    """The control plane's snapshot: service `api` with these pods as its endpoints (and the
    client, web-0, as the endpoint of its own service)."""
    svc = service(
        "shop", "api", ("10.96.0.10",), [(f"10.244.2.{i + 2}", p, True) for i, p in enumerate(pods)]
    )
    client = service("emojivoto", "web", ("10.96.0.11",), [("10.244.1.10", "web-0", True)])
    snap = dpb.Snapshot(services=[codec.service_to_pb(s) for s in (svc, client)], last=True)
    assert table.apply(dpb.Update(revision=revision, snapshot=snap)) is not None


def api_pod(name: str, i: int) -> Peer:
    return Peer(f"10.244.2.{i + 2}", "shop", name, "StatefulSet", "api", "api", "")


def traffic(sink: AgentSink, pods: list[str], conn: int) -> int:
    for i, name in enumerate(pods):
        dst = api_pod(name, i)
        for status in (200, 404, 503):
            sink.request(request(web(), dst, status=status))
        sink.tcp_opened(opened(conn, web(), dst))
        sink.tcp_closed(closed(conn, web(), dst, 10, 100))
        conn += 1
    return conn


def report(sink: AgentSink) -> None:
    take_reports(sink.aggregate, node="node1", version="t", load=LOAD, now_ms=0, interval_ms=1000)


def test_series_of_pods_gone_from_the_table_leave_metrics_after_the_grace() -> None:
    sink = AgentSink(node="node1")
    table = DestinationTable("node1")
    revision, now, conn = 1, 1000.0, 1
    publish(table, revision, ["api-0"])
    conn = traffic(sink, ["api-0"], conn)
    report(sink)
    baseline = metrics_text(sink)
    assert 'dst_pod="api-0"' in baseline
    sizes = []
    for cycle in range(20):  # scale 1 -> 10 -> 1, twenty times
        pods = ["api-0"] + [f"api-{cycle}-{i}" for i in range(9)]
        revision += 1
        publish(table, revision, pods)
        conn = traffic(sink, pods, conn)
        report(sink)  # the control plane got the deltas
        revision += 1
        publish(table, revision, ["api-0"])
        now += 5
        sink.forget_gone_pods(table, now=now, grace=GRACE)
        # Within the grace the gone pods' last values are still there for Prometheus.
        assert f'dst_pod="api-{cycle}-8"' in metrics_text(sink)
        now += GRACE
        sink.forget_gone_pods(table, now=now, grace=GRACE)
        sizes.append(len(metrics_text(sink).splitlines()))
    text = metrics_text(sink)
    assert "api-19-" not in text and "api-0-" not in text
    assert 'dst_pod="api-0"' in text  # the pod that stayed keeps its series and counts
    # The same lines as with the one pod, but for the count of series forgotten.
    assert sizes == [len(baseline.splitlines())] * 20
    assert "nodemesh_agent_series_forgotten_total 720.0" in text  # 20 x 9 pods x (3 + 1)
    assert "nodemesh_agent_series_forgotten_total 0.0" in baseline
    assert len(sink.aggregate.requests) == 3 and len(sink.aggregate.tcp) == 1


def test_a_gone_pods_unreported_delta_and_open_connection_are_kept() -> None:
    """Forgetting never loses what the control plane has not got, nor an open connection."""
    sink = AgentSink(node="node1")
    table = DestinationTable("node1")
    publish(table, 1, ["api-0", "api-1"])
    dst = api_pod("api-1", 1)
    sink.request(request(web(), dst))
    sink.tcp_opened(opened(7, web(), dst))
    publish(table, 2, ["api-0"])
    sink.forget_gone_pods(table, now=0.0, grace=GRACE)
    assert sink.forget_gone_pods(table, now=GRACE + 1, grace=GRACE) == 0
    report(sink)  # the request's delta is taken; the connection stays open
    assert sink.forget_gone_pods(table, now=GRACE + 2, grace=GRACE) == 1
    assert len(sink.aggregate.tcp) == 1
    sink.tcp_closed(closed(7, web(), dst, 1, 1))
    report(sink)
    assert sink.forget_gone_pods(table, now=GRACE + 3, grace=GRACE) == 1
    assert 'dst_pod="api-1"' not in metrics_text(sink)


def test_nothing_is_forgotten_before_the_table_is_synced() -> None:
    sink = AgentSink(node="node1")
    sink.request(request(web(), api_pod("api-1", 1)))
    report(sink)
    empty = DestinationTable("node1")
    assert sink.forget_gone_pods(empty, now=0.0, grace=0.0) == 0
    assert sink.forget_gone_pods(empty, now=1e9, grace=0.0) == 0
    assert len(sink.aggregate.requests) == 1
