"""Stat and Edges from a real Prometheus (Debian's `prometheus`, scraping the agent's /metrics
on loopback) equal the embedded store fed with the same agent's reports: counts exact,
latency quantiles within one of Linkerd's buckets. And a Prometheus that is not there is named."""

from __future__ import annotations

import bisect
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controlplane.prometheus_telemetry import (
    PrometheusTelemetry,
    PrometheusUnavailable,
    bucket_quantile,
)
from controlplane.telemetry import TelemetryStore, parse_report
from controlplane.telemetry_port import Selector, StoreTelemetry
from nodeagent.observe.events import (
    AuthzDenied,
    Peer,
    RequestObserved,
    RouteObserved,
    TcpClosed,
    TcpOpened,
)
from nodeagent.observe.stats.exposition import AggregateCollector
from nodeagent.observe.stats.report import Load, take_reports
from nodeagent.observe.stats.series import LATENCY_BOUNDS_MS, Aggregate

PROMETHEUS = shutil.which("prometheus")
WEB_ID = "spiffe://cluster.local/ns/emojivoto/sa/web"
EMOJI_ID = "spiffe://cluster.local/ns/emojivoto/sa/emoji"
WEB = Peer("10.244.1.10", "emojivoto", "web-0", "Deployment", "web", "", WEB_ID)
EMOJI = [
    Peer(f"10.244.2.{10 + i}", "emojivoto", f"emoji-{i}", "Deployment", "emoji", "emoji-svc",
         EMOJI_ID)
    for i in range(2)
]  # fmt: skip
VOTING = Peer("10.244.2.30", "emojivoto", "voting-0", "Deployment", "voting", "voting-svc", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(src: Peer, dst: Peer, direction: str, latency_ms: float, status: int, n: int):
    return RequestObserved(
        req_id=n, conn_id=1, direction=direction, src=src, dst=dst, protocol="http1",
        tls=bool(dst.identity), method="GET", authority=f"{dst.service}.emojivoto:8080",
        path="/api", status=status, grpc_status=None,
        classification="failure" if status >= 500 else "success", reset=False,
        latency_s=latency_ms / 1000, latency_first_byte_s=latency_ms / 1000,
        request_bytes=10, response_bytes=100, started_at=time.time(),
    )  # fmt: skip


def traffic(agg: Aggregate) -> int:
    """A fixed run through one agent: web's outbound calls and emoji's and voting's inbound."""
    n = 0
    latencies = [0.7, 3.5, 8, 12, 18, 25, 45, 80, 150, 450, 900]
    for i in range(330):
        dst = [EMOJI[0], EMOJI[1], VOTING][i % 3]
        status = 500 if i % 11 == 0 else 200
        ms = latencies[i % len(latencies)] * (1 + (i % 7) / 10)
        for direction in ("outbound", "inbound"):
            n += 1
            agg.request(_request(WEB, dst, direction, ms, status, n))
    # What EMOJI's policy denied: HTTP/1 answered 403, gRPC PERMISSION_DENIED, a TCP refusal.
    for i, (protocol, status, grpc_status) in enumerate(
        [("http1", 403, None)] * 5 + [("grpc", 200, 7)] * 3 + [("tcp", 0, None)] * 2
    ):
        agg.denials.add(
            AuthzDenied(
                conn_id=100 + i, direction="inbound", src=WEB, dst=EMOJI[0], tls=True,
                policy="emojivoto/emoji-only-voting", reason="not allowed", protocol=protocol,
                at=time.time(), status=status, grpc_status=grpc_status,
            )
        )  # fmt: skip
    for conn in range(6):
        dst = EMOJI[conn % 2]
        agg.tcp_opened(TcpOpened(conn, "outbound", WEB, dst, "tcp", True, time.time()))
        if conn < 4:
            agg.tcp_closed(
                TcpClosed(conn, "outbound", WEB, dst, "tcp", True, 100 * conn, 1000 * conn, 1.0)
            )
    # web's L7 path: requests to emoji-svc by route rule (and some no rule took).
    for i in range(120):
        failed = i % 10 == 0
        agg.routes.add(
            RouteObserved(
                src=WEB, service_namespace="emojivoto", service="emoji-svc",
                route="emojivoto/emoji-api/0" if i % 4 else "default", protocol="http1",
                status=503 if failed else 200, grpc_status=None, success=not failed,
                latency_s=latencies[i % len(latencies)] / 1000, retries=i % 3,
            )
        )  # fmt: skip
    return 330 + 8  # the denied HTTP and gRPC requests count as requests, as in the store


class _Metrics(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802
        body = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus is not installed (scripts/bootstrap installs it)")
    agg = Aggregate()
    total = traffic(agg)
    registry = CollectorRegistry()
    registry.register(AggregateCollector(agg))
    handler = type("Handler", (_Metrics,), {"registry": registry})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = TelemetryStore()

    def report() -> None:
        # An agent reports each second (open connections too): the store's gauge stays fresh.
        for r in take_reports(
            agg, node="node1", version="test", load=Load(1, 0, 0.0, 0),
            now_ms=int(time.time() * 1000), interval_ms=1000,
        ):  # fmt: skip
            store.ingest(parse_report(r, encoded_size=r.ByteSize()))

    report()
    tmp = tmp_path_factory.mktemp("prometheus")
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: nodemesh-agent\n"
        "  static_configs:\n"
        f"  - targets: ['127.0.0.1:{server.server_address[1]}']\n"
        "    labels: {node: node1}\n"
    )
    port = _free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "store": StoreTelemetry(store),
            "report": report,
            "total": total,
            "log": tmp / "prometheus.log",
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.shutdown()
        server.server_close()


async def _scraped(world: dict) -> PrometheusTelemetry:
    prom = PrometheusTelemetry(world["url"], world["store"])
    deadline = time.monotonic() + 90
    while True:
        try:
            rows = await prom.stat(
                group_by="deployment", namespace="emojivoto", source=None, destination=None,
                window_s=300,
            )  # fmt: skip
            if sum(r.requests for r in rows) == world["total"]:
                return prom
        except PrometheusUnavailable:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                "Prometheus never showed the traffic:\n" + Path(world["log"]).read_text()[-2000:]
            )
        time.sleep(0.5)


def _bucket(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


QUERIES = [
    ("deployment", "emojivoto", None, None),
    ("pod", "emojivoto", None, None),
    ("namespace", "", None, None),
    ("node", "", None, None),
    ("service", "emojivoto", None, None),
    ("deployment", "emojivoto", None, Selector("deployment", "emojivoto", "emoji")),
    ("deployment", "emojivoto", Selector("deployment", "emojivoto", "web"), None),
    ("pod", "emojivoto", Selector("deployment", "emojivoto", "web"), None),
]


@pytest.mark.parametrize(("group_by", "namespace", "source", "destination"), QUERIES)
async def test_stat_from_prometheus_equals_the_embedded_store(
    world: dict, group_by: str, namespace: str, source, destination
) -> None:
    prom = await _scraped(world)
    world["report"]()
    ask = dict(
        group_by=group_by, namespace=namespace, source=source, destination=destination,
        window_s=300,
    )  # fmt: skip
    embedded = {(r.namespace, r.name): r for r in world["store"].stat(**ask)}
    from_prom = {(r.namespace, r.name): r for r in await prom.stat(**ask)}
    assert embedded and set(from_prom) == set(embedded)
    for key, e in embedded.items():
        p = from_prom[key]
        assert (p.requests, p.success, p.authz_denied) == (
            e.requests,
            e.success,
            e.authz_denied,
        ), key
        assert (p.tcp_open_connections, p.read_bytes, p.write_bytes) == (
            e.tcp_open_connections,
            e.read_bytes,
            e.write_bytes,
        ), key
        quantiles = (0.5, 0.95, 0.99)
        for q, pq, eq in zip(
            quantiles, p.latencies_ms(*quantiles), e.latencies_ms(*quantiles), strict=True
        ):
            if e.requests == 0:
                continue
            assert pq is not None and eq is not None
            # Same Linkerd bucket (the store's log-linear value may sit just past a bound).
            assert abs(_bucket(pq) - _bucket(eq)) <= 1, (key, q, pq, eq)


@pytest.mark.parametrize("source", [None, Selector("deployment", "emojivoto", "web")])
async def test_routes_from_prometheus_equal_the_embedded_store(world: dict, source) -> None:
    prom = await _scraped(world)
    world["report"]()
    ask = dict(services=[("emojivoto", "emoji-svc")], source=source, window_s=300)
    embedded = {r.route: r for r in world["store"].routes(**ask)}
    from_prom = {r.route: r for r in await prom.routes(**ask)}
    assert set(embedded) == {"emojivoto/emoji-api/0", "default"} == set(from_prom)
    for route, e in embedded.items():
        p = from_prom[route]
        assert (p.namespace, p.name, p.requests, p.success) == (
            e.namespace, e.name, e.requests, e.success,
        ), route  # fmt: skip
        for pq, eq in zip(p.latencies_ms(0.5, 0.99), e.latencies_ms(0.5, 0.99), strict=True):
            assert pq is not None and eq is not None
            assert abs(_bucket(pq) - _bucket(eq)) <= 1, (route, pq, eq)
    assert embedded["emojivoto/emoji-api/0"].requests == 90


async def test_edges_from_prometheus_equal_the_embedded_store(world: dict) -> None:
    prom = await _scraped(world)
    ask = dict(kind="deployment", namespace="emojivoto", window_s=300)
    embedded = {(e.src.name, e.dst.name): e for e in world["store"].edges(**ask)}
    from_prom = {(e.src.name, e.dst.name): e for e in await prom.edges(**ask)}
    assert set(from_prom) == set(embedded) == {("web", "emoji"), ("web", "voting")}
    for key, e in embedded.items():
        p = from_prom[key]
        assert (p.requests, p.tcp_connections, p.tls, p.dst_identity) == (
            e.requests,
            e.tcp_connections,
            e.tls,
            e.dst_identity,
        ), key
    assert from_prom[("web", "emoji")].src_identity == WEB_ID


# Taken verbatim from Linkerd's Grafana dashboards (linkerd2 grafana/dashboards) and Flagger's
# Linkerd provider, with their variables filled in ($namespace, $deployment, {{ target }}...).
LINKERD_QUERIES = {
    "top-line GLOBAL SUCCESS RATE": (
        'sum(irate(response_total{classification="success", deployment=~".*"}[30s])) / '
        'sum(irate(response_total{deployment=~".*"}[30s]))',
        {},
    ),
    "top-line DEPLOYMENTS MONITORED": (
        'count(count(request_total{namespace=~"emojivoto"}) by (namespace, deployment))',
        {},
    ),
    "top-line P95 LATENCY by deployment": (
        "histogram_quantile(0.95, sum(irate(response_latency_ms_bucket"
        '{namespace="emojivoto", direction="inbound"}[30s])) by (le, deployment))',
        {"deployment": "emoji"},
    ),
    "deployment variable $outbound": (
        'count(request_total{namespace="emojivoto", deployment="web"}) by (dst_deployment)',
        {"dst_deployment": "emoji"},
    ),
    "flagger request-success-rate": (
        'sum(rate(response_total{namespace="emojivoto",deployment=~"emoji",'
        'classification!="failure",direction="inbound"}[1m]))/sum(rate(response_total'
        '{namespace="emojivoto",deployment=~"emoji",direction="inbound"}[1m]))*100',
        {},
    ),
    "flagger request-duration": (
        "histogram_quantile(0.99, sum(rate(response_latency_ms_bucket{namespace="
        '"emojivoto",deployment=~"emoji",direction="inbound"}[1m])) by (le))',
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(LINKERD_QUERIES))
async def test_linkerd_dashboard_and_flagger_queries_return_data(world: dict, name: str) -> None:
    prom = await _scraped(world)
    query, must_have = LINKERD_QUERIES[name]
    found = await prom.query(query)
    # The counters stand still after the run, so rates are 0 (ratios NaN): the series are there.
    assert found, name
    assert any(must_have.items() <= labels.items() for labels, _ in found), (name, found)


async def test_an_unreachable_prometheus_is_named() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    prom = PrometheusTelemetry(url, StoreTelemetry(TelemetryStore()), timeout_s=2)
    with pytest.raises(PrometheusUnavailable, match=f"Prometheus at {url} is unreachable"):
        await prom.stat(
            group_by="deployment", namespace="x", source=None, destination=None, window_s=60
        )


async def test_a_prometheus_that_never_answers_is_named_with_the_cause() -> None:
    # Listening, never answering: httpx's read timeout has an empty message, which the error
    # showed as "unreachable: " (an exception is always truthy, so `exc or name` never fell back).
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        prom = PrometheusTelemetry(url, StoreTelemetry(TelemetryStore()), timeout_s=0.5)
        with pytest.raises(PrometheusUnavailable, match=r"is unreachable: \S"):
            await prom.stat(
                group_by="deployment", namespace="x", source=None, destination=None, window_s=60
            )


def test_bucket_quantile_interpolates_as_histogram_quantile() -> None:
    inf = float("inf")
    assert bucket_quantile(0.5, {1.0: 0, 2.0: 10, inf: 10}) == 1.5
    assert bucket_quantile(0.99, {1.0: 5, 2.0: 5, inf: 10}) == 2.0
    assert bucket_quantile(0.5, {1.0: 0, inf: 0}) is None


class _Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def test_a_caller_can_ask_the_embedded_store_to_compare() -> None:
    from controlplane.public_api import STATS_SOURCE, PublicService

    reports = StoreTelemetry(TelemetryStore())
    prom = PrometheusTelemetry("http://127.0.0.1:9", reports)
    service = PublicService.__new__(PublicService)
    service.telemetry = prom
    assert service._telemetry(_Context(((STATS_SOURCE, "embedded"),))) is reports  # type: ignore[arg-type]
    assert service._telemetry(_Context(())) is prom  # type: ignore[arg-type]
    service.telemetry = reports
    assert service._telemetry(_Context(((STATS_SOURCE, "embedded"),))) is reports  # type: ignore[arg-type]
