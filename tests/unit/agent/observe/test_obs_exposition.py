"""/metrics from the aggregate: parsed back with prometheus_client's parser and checked against
what was fed in (names, Linkerd's labels, cumulative buckets, no repeated samples)."""

from __future__ import annotations

import random

from obs_fixtures import EMOJI_ID, WEB_ID, closed, emoji, opened, outsider, request, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.observe.sink import AgentSink
from nodeagent.observe.stats.exposition import AggregateCollector
from nodeagent.observe.stats.series import LATENCY_BOUNDS_MS


def scrape(sink: AgentSink, *, tcp: bool = True) -> dict[str, list]:
    registry = CollectorRegistry()
    registry.register(AggregateCollector(sink.aggregate, tcp=tcp))
    text = generate_latest(registry).decode()
    families = {f.name: f.samples for f in text_string_to_metric_families(text)}
    # Every sample is unique by name and labels, as Prometheus requires.
    for samples in families.values():
        keys = [(s.name, tuple(sorted(s.labels.items()))) for s in samples]
        assert len(keys) == len(set(keys))
    return families


def pick(samples: list, name: str, **labels: str) -> list:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_request_and_response_totals_with_linkerd_labels() -> None:
    sink = AgentSink(node="node1")
    for _ in range(7):
        sink.request(request(web(), emoji(), status=200))
    for _ in range(2):
        sink.request(request(web(), emoji(), status=503))
    for _ in range(4):
        sink.request(request(web(), emoji(), protocol="grpc", status=200, grpc_status=14))
    families = scrape(sink)

    (req,) = families["request"]
    assert req.name == "request_total" and req.value == 13
    assert req.labels == {
        "direction": "outbound",
        "namespace": "emojivoto",
        "pod": "web-0",
        "deployment": "web",
        "dst_namespace": "emojivoto",
        "dst_pod": "emoji-0",
        "dst_deployment": "emoji",
        "dst_service": "emoji-svc",
        "tls": "true",
        "server_id": EMOJI_ID,
        "authority": "emoji-svc.emojivoto:8080",
    }
    responses = families["response"]
    assert (
        pick(responses, "response_total", status_code="200", classification="success")[0].value == 7
    )
    assert (
        pick(responses, "response_total", status_code="503", classification="failure")[0].value == 2
    )
    (grpc,) = pick(responses, "response_total", grpc_status="14")
    assert grpc.value == 4 and grpc.labels["classification"] == "failure"


def test_latency_buckets_are_cumulative_and_exact_at_linkerds_bounds() -> None:
    sink = AgentSink(node="node1")
    rng = random.Random(3)
    samples_ms = [round(rng.lognormvariate(2.5, 1.5), 3) for _ in range(3000)]
    samples_ms += [1.0, 5.0, 50.0, 1000.0]  # exactly on bounds: le is inclusive
    for ms in samples_ms:
        sink.request(request(web(), emoji(), first_byte_s=ms / 1000))
    samples = scrape(sink)["response_latency_ms"]
    buckets = {s.labels["le"]: s.value for s in pick(samples, "response_latency_ms_bucket")}
    assert list(buckets) == [str(b) for b in LATENCY_BOUNDS_MS] + ["+Inf"]
    for bound in LATENCY_BOUNDS_MS:
        exact = sum(1 for ms in samples_ms if round(ms * 1000) <= bound * 1000)
        assert buckets[str(bound)] == exact, bound
    assert buckets["+Inf"] == len(samples_ms)
    (count,) = pick(samples, "response_latency_ms_count")
    (total,) = pick(samples, "response_latency_ms_sum")
    assert count.value == len(samples_ms)
    assert abs(total.value - sum(samples_ms)) < len(samples_ms) * 0.001
    assert count.labels["status_code"] == "200"


def test_inbound_labels_name_the_local_pod_and_the_client_identity() -> None:
    sink = AgentSink(node="node2")
    sink.request(request(web(), emoji(), direction="inbound"))
    sink.request(request(outsider("192.0.2.7"), emoji(), direction="inbound", tls=False))
    reqs = scrape(sink)["request"]
    (meshed,) = pick(reqs, "request_total", tls="true")
    assert meshed.labels["pod"] == "emoji-0" and meshed.labels["deployment"] == "emoji"
    assert meshed.labels["client_id"] == WEB_ID and "dst_pod" not in meshed.labels
    (plain,) = pick(reqs, "request_total", tls="no_identity")
    assert plain.labels["no_tls_reason"] == "no_tls_from_remote" and "client_id" not in plain.labels


def test_tcp_families_and_series_that_differ_only_in_unlabelled_fields_are_summed() -> None:
    sink = AgentSink(node="node1")
    # Two different clients outside the mesh, inbound: Linkerd has no label for the client,
    # so their series share one label set and must be summed, not repeated.
    a, b = outsider("192.0.2.1"), outsider("192.0.2.2")
    a2 = a.__class__("192.0.2.1", "other", "client-a")
    for conn, src in enumerate((a, b, a2)):
        sink.tcp_opened(opened(conn, src, emoji(), direction="inbound"))
    sink.tcp_closed(closed(0, a, emoji(), read=10, write=20, direction="inbound"))
    families = scrape(sink)
    (opened_total,) = families["tcp_open"]
    assert opened_total.value == 3 and opened_total.labels["pod"] == "emoji-0"
    assert families["tcp_close"][0].value == 1
    assert families["tcp_read_bytes"][0].value == 10
    assert families["tcp_write_bytes"][0].value == 20
    assert families["tcp_open_connections"][0].value == 2
    # The legacy per-pod counters still own those names: the collector can leave them out.
    assert "tcp_open" not in scrape(sink, tcp=False)
