"""Per-route request counts of the client's L7 path (sans-io): the `route` label end to end.

Each request the L7 path answers is counted under the mesh route rule that carried it
("namespace/name/rule", or "default" when the Service has no rule for it), keyed by the client
pod, the Service it called (the routes' parent), protocol, status and classification. Two uses:
- /metrics: `route_request_total`, `route_response_total` (classification, status_code,
  grpc_status), `route_retry_total` and `route_response_latency_ms` (Linkerd's buckets), each
  with `route`, `dst_namespace`, `dst_service` and the client pod's labels;
- telemetry reports: RequestSeries with `route` set, so the control plane answers
  `nodemesh routes` (the relay still observes the same requests as pod-to-pod traffic, so the
  control plane keeps these series out of stat).
Routes are configuration, so the label's values are bounded; the table is capped anyway.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections.abc import Container, Iterator
from typing import Any

from prometheus_client.core import Metric

from nodeagent.observe.events import Peer, RouteObserved
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.histogram import bucket_index

MAX_KEYS = 10_000
_PROTOCOLS = {"http1": pb.HTTP1, "http2": pb.HTTP2, "grpc": pb.GRPC}


class _Counts:
    __slots__ = ("count", "retries", "sum_us", "buckets", "pending", "p_count", "p_sum_us")

    def __init__(self, bounds: int) -> None:
        self.count = self.retries = self.sum_us = 0
        self.buckets = [0] * (bounds + 1)
        self.pending: dict[int, int] = {}
        self.p_count = self.p_sum_us = 0


def _plain(peer: Peer) -> Peer:
    return dataclasses.replace(peer, ip="") if peer.ip else peer


class RouteStats:
    def __init__(self, *, bounds_us: tuple[int, ...], max_keys: int = MAX_KEYS) -> None:
        self._bounds_us = bounds_us  # Linkerd's latency buckets, as the aggregate's
        self.max_keys = max_keys
        # (src, service namespace, service, route, protocol, status, grpc_status, success)
        self.table: dict[tuple[Any, ...], _Counts] = {}
        self.dropped = 0

    def add(self, ev: RouteObserved) -> None:
        key = (
            _plain(ev.src), ev.service_namespace, ev.service, ev.route, ev.protocol, ev.status,
            ev.grpc_status, ev.success,
        )  # fmt: skip
        c = self.table.get(key)
        if c is None:
            if len(self.table) >= self.max_keys:
                self.dropped += 1
                return
            c = self.table[key] = _Counts(len(self._bounds_us))
        us = int(ev.latency_s * 1_000_000 + 0.5) if ev.latency_s > 0 else 0
        c.count += 1
        c.retries += ev.retries
        c.sum_us += us
        c.buckets[bisect_left(self._bounds_us, us)] += 1
        index = bucket_index(us)
        c.pending[index] = c.pending.get(index, 0) + 1
        c.p_count += 1
        c.p_sum_us += us

    def clients(self) -> set[tuple[str, str]]:
        """(namespace, pod) of every client pod counted."""
        return {(key[0].namespace, key[0].pod) for key in self.table if key[0].pod}

    def forget(self, gone: Container[tuple[str, str]]) -> int:
        """Drop the counts of client pods that left (once reported); returns how many went."""
        doomed = [
            key
            for key, c in self.table.items()
            if not c.p_count and (key[0].namespace, key[0].pod) in gone
        ]
        for key in doomed:
            del self.table[key]
        return len(doomed)

    def collect(self) -> Iterator[Metric]:
        from nodeagent.observe.stats.exposition import counter, latency_family, peer_labels

        requests: dict[tuple[tuple[str, str], ...], int] = {}
        responses: dict[tuple[tuple[str, str], ...], int] = {}
        retries: dict[tuple[tuple[str, str], ...], int] = {}
        latency: dict[tuple[tuple[str, str], ...], list[int]] = {}
        latency_sum: dict[tuple[tuple[str, str], ...], float] = {}
        for (src, ns, svc, route, _proto, status, grpc, ok), c in list(self.table.items()):
            dst = Peer(ip="", namespace=ns, service=svc)
            base = [
                lab
                for lab in peer_labels("outbound", src, dst, True)
                if lab[0] not in ("tls", "server_id")
            ] + [("route", route)]
            k = tuple(sorted(base))
            requests[k] = requests.get(k, 0) + c.count
            retries[k] = retries.get(k, 0) + c.retries
            resp = [*base, ("classification", "success" if ok else "failure")]
            if status:
                resp.append(("status_code", str(status)))
            if grpc is not None:
                resp.append(("grpc_status", str(grpc)))
            rk = tuple(sorted(resp))
            responses[rk] = responses.get(rk, 0) + c.count
            held = latency.setdefault(k, [0] * len(c.buckets))
            for i, n in enumerate(c.buckets):
                held[i] += n
            latency_sum[k] = latency_sum.get(k, 0.0) + c.sum_us / 1000
        yield counter("route_request", "Requests the L7 path answered, by route rule", requests)
        yield counter("route_response", "Responses of the L7 path, by route rule", responses)
        yield counter("route_retry", "Retries the L7 path sent (within the budget)", retries)
        yield latency_family(
            "route_response_latency_ms",
            "Time from the request to the end of the response on the L7 path, milliseconds",
            latency,
            latency_sum,
        )

    def drain(self) -> list[pb.RequestSeries]:
        """The pending counts as report series with `route` set (and reset them)."""
        from nodeagent.observe.stats.report import peer_pb

        out = []
        for (src, ns, svc, route, proto, status, grpc, ok), c in self.table.items():
            if not c.p_count:
                continue
            indices = sorted(c.pending)
            series = pb.RequestSeries(
                direction=pb.OUTBOUND,
                src=peer_pb(src),
                dst=pb.Peer(namespace=ns, service=svc),
                protocol=_PROTOCOLS.get(proto, pb.HTTP1),
                status_code=status if 0 <= status <= 999 else 0,
                classification=pb.SUCCESS if ok else pb.FAILURE,
                tls=True,
                responses=c.p_count,
                latency=pb.Histogram(
                    buckets=indices, counts=[c.pending[i] for i in indices], sum_us=c.p_sum_us
                ),
                route=route,
            )
            if grpc is not None:
                series.grpc_status = grpc if 0 <= grpc <= 16 else 2
            out.append(series)
            c.pending = {}
            c.p_count = c.p_sum_us = 0
        return out
