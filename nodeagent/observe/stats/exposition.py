"""The aggregate as Prometheus metrics with Linkerd's names and labels, built on each scrape.

Families: request_total, response_total, response_latency_ms (histogram, Linkerd's buckets),
tcp_open_total, tcp_close_total, tcp_read_bytes_total, tcp_write_bytes_total,
tcp_open_connections. Labels follow the Linkerd proxy: `direction`; the pod this agent serves
on that side as `namespace`, `pod` and its workload kind (`deployment`, `statefulset`, ...);
outbound adds the destination's `dst_namespace`, `dst_<kind>`, `dst_pod`, `dst_service`;
`tls` is "true" or "no_identity" with `no_tls_reason`; `client_id` (inbound) or `server_id`
(outbound) name the peer's proven identity; `authority` on the HTTP families; `status_code`,
`classification` and `grpc_status` on responses. Series that end up with the same labels (they
differ in something Linkerd does not label) are summed, so no sample is ever repeated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nodeagent.observe.events import Peer
from nodeagent.observe.stats.series import LATENCY_BOUNDS_MS, Aggregate, RequestSeries, TcpSeries

Labels = tuple[tuple[str, str], ...]
NO_TLS_REASON = {"inbound": "no_tls_from_remote", "outbound": "not_provided_by_service_discovery"}
_LE = [str(b) for b in LATENCY_BOUNDS_MS] + ["+Inf"]


def _workload(prefix: str, peer: Peer) -> list[tuple[str, str]]:
    if not peer.workload or not peer.workload_kind:
        return []
    return [(f"{prefix}{peer.workload_kind.lower()}", peer.workload)]


def peer_labels(direction: str, src: Peer, dst: Peer, tls: bool) -> list[tuple[str, str]]:
    """Labels common to every family for one (direction, src, dst, tls)."""
    local = src if direction == "outbound" else dst
    labels = [("direction", direction)]
    if local.namespace:
        labels.append(("namespace", local.namespace))
    if local.pod:
        labels.append(("pod", local.pod))
    labels += _workload("", local)
    if direction == "outbound":
        for name, value in (
            ("dst_namespace", dst.namespace),
            ("dst_pod", dst.pod),
            ("dst_service", dst.service),
        ):
            if value:
                labels.append((name, value))
        labels += _workload("dst_", dst)
    if tls:
        labels.append(("tls", "true"))
        peer_id = dst.identity if direction == "outbound" else src.identity
        if peer_id:
            labels.append(("server_id" if direction == "outbound" else "client_id", peer_id))
    else:
        labels += [("tls", "no_identity"), ("no_tls_reason", NO_TLS_REASON.get(direction, ""))]
    return labels


def _request_labels(s: RequestSeries) -> list[tuple[str, str]]:
    labels = peer_labels(s.direction, s.src, s.dst, s.tls)
    if s.authority:
        labels.append(("authority", s.authority))
    return labels


def _status(s: RequestSeries) -> list[tuple[str, str]]:
    return [("status_code", str(s.status))] if s.status else []


def _add(table: dict[Labels, Any], labels: list[tuple[str, str]], value: Any) -> None:
    key = tuple(sorted(labels))
    table[key] = table.get(key, 0) + value


class AggregateCollector(Collector):
    """Registered in the agent's registry; reads the aggregate on the scrape thread or loop."""

    def __init__(self, aggregate: Aggregate, *, tcp: bool = True) -> None:
        self.aggregate = aggregate
        # False while nodeagent.observe.metrics still registers the legacy tcp_* counters.
        self.tcp = tcp

    def collect(self) -> Iterator[Metric]:
        agg = self.aggregate
        requests: dict[Labels, int] = {}
        responses: dict[Labels, int] = {}
        latency: dict[Labels, list[int]] = {}
        latency_sum: dict[Labels, float] = {}
        # list(): a scrape from another thread must not see the dict change size under it.
        for s in list(agg.requests.values()):
            base = _request_labels(s)
            _add(requests, base, s.count)
            resp = base + _status(s)
            classification = "success" if s.success else "failure"
            extra = [("classification", classification)]
            if s.grpc_status is not None:
                extra.append(("grpc_status", str(s.grpc_status)))
            _add(responses, resp + extra, s.count)
            key = tuple(sorted(resp))
            held = latency.get(key)
            if held is None:
                latency[key] = list(s.buckets)
            else:
                for i, n in enumerate(s.buckets):
                    held[i] += n
            latency_sum[key] = latency_sum.get(key, 0.0) + s.sum_us / 1000
        yield counter("request", "Requests the agent proxied", requests)
        yield counter("response", "Responses the agent proxied", responses)
        yield latency_family(
            "response_latency_ms",
            "Time to the response's first byte, in milliseconds",
            latency,
            latency_sum,
        )
        if self.tcp:
            yield from self._tcp(list(agg.tcp.values()))
        yield from agg.denials.collect()
        yield from agg.routes.collect()
        yield CounterMetricFamily(
            "nodemesh_agent_series_forgotten",
            "Metric series dropped because their pod left the cluster (after the grace)",
            value=agg.forgotten,
        )

    def _tcp(self, series: list[TcpSeries]) -> Iterator[Metric]:
        opened: dict[Labels, int] = {}
        closed: dict[Labels, int] = {}
        read: dict[Labels, int] = {}
        write: dict[Labels, int] = {}
        current: dict[Labels, int] = {}
        for s in series:
            labels = [*peer_labels(s.direction, s.src, s.dst, s.tls), ("peer", "src")]
            _add(opened, labels, s.opened)
            _add(closed, labels, s.closed)
            _add(read, labels, s.read_bytes)
            _add(write, labels, s.write_bytes)
            _add(current, labels, max(s.open, 0))
        yield counter("tcp_open", "TCP connections opened", opened)
        yield counter("tcp_close", "TCP connections closed", closed)
        yield counter("tcp_read_bytes", "Bytes read from the connection's client", read)
        yield counter("tcp_write_bytes", "Bytes written to the connection's client", write)
        gauge = GaugeMetricFamily("tcp_open_connections", "TCP connections open now")
        for key, n in current.items():
            gauge.add_sample("tcp_open_connections", dict(key), n)
        yield gauge


def latency_family(
    name: str, doc: str, latency: dict[Labels, list[int]], sums_ms: dict[Labels, float]
) -> HistogramMetricFamily:
    """A histogram family from per-label-set counts in Linkerd's buckets (LATENCY_BOUNDS_MS)."""
    hist = HistogramMetricFamily(name, doc, labels=None)
    for key, buckets in latency.items():
        cumulative, running = [], 0
        for le, n in zip(_LE, buckets, strict=True):
            running += n
            cumulative.append((le, running))
        _histogram_sample(hist, dict(key), cumulative, sums_ms[key])
    return hist


def counter(name: str, doc: str, table: dict[Labels, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc)
    for key, n in table.items():
        family.add_sample(f"{name}_total", dict(key), n)
    return family


def _histogram_sample(
    family: HistogramMetricFamily,
    labels: dict[str, str],
    cumulative: list[tuple[str, int]],
    total: float,
) -> None:
    # add_metric needs one label-name list for the whole family; Linkerd's label sets vary by
    # direction and kind, so the samples are added one by one.
    name = family.name
    for le, n in cumulative:
        family.add_sample(f"{name}_bucket", {**labels, "le": le}, n)
    family.add_sample(f"{name}_count", labels, cumulative[-1][1])
    family.add_sample(f"{name}_sum", labels, total)
