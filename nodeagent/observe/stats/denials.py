"""Authorization denials counted by the destination's agent (sans-io): per policy and peer pair
for /metrics (Linkerd's `inbound_http_authz_deny_total` and `inbound_tcp_authz_deny_total`,
labelled with `authz`, the policy's namespace/name) and as pending deltas for the telemetry
reports (RequestSeries.authz_deny, TcpSeries.authz_denied), so `stat` shows them.

Denied requests are answered by the agent itself and never reach the app: they are counted here
only, not among the proxied requests of request_total/response_total.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from nodeagent.observe.events import AuthzDenied, Peer
from nodemesh.api import telemetry_pb2 as pb

MAX_KEYS = 10_000
_PROTOCOLS = {"http1": pb.HTTP1, "http2": pb.HTTP2, "grpc": pb.GRPC}
_DIRECTIONS = {"inbound": pb.INBOUND, "outbound": pb.OUTBOUND}


def _plain(peer: Peer) -> Peer:
    return dataclasses.replace(peer, ip="") if peer.ip else peer


class Denials:
    def __init__(self, *, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        # (protocol, direction, src, dst, tls, policy, status, grpc_status) -> [total, pending]
        self.table: dict[tuple[Any, ...], list[int]] = {}
        self.dropped = 0

    def add(self, ev: AuthzDenied) -> None:
        key = (
            ev.protocol, ev.direction, _plain(ev.src), _plain(ev.dst), ev.tls, ev.policy,
            ev.status, ev.grpc_status,
        )  # fmt: skip
        counts = self.table.get(key)
        if counts is None:
            if len(self.table) >= self.max_keys:
                self.dropped += 1
                return
            counts = self.table[key] = [0, 0]
        counts[0] += 1
        counts[1] += 1

    def collect(self) -> Iterator[Metric]:
        from nodeagent.observe.stats.exposition import peer_labels  # it imports the aggregate: late

        families = {
            "http": CounterMetricFamily(
                "inbound_http_authz_deny", "HTTP and gRPC requests denied by policy"
            ),
            "tcp": CounterMetricFamily(
                "inbound_tcp_authz_deny", "TCP connections refused by policy"
            ),
        }
        sums: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        for (protocol, direction, src, dst, tls, policy, *_), (total, _p) in list(
            self.table.items()
        ):
            which = "tcp" if protocol == "tcp" else "http"
            labels = [*peer_labels(direction, src, dst, tls), ("authz", policy)]
            if which == "http":
                labels.append(("protocol", protocol))
            k = (which, tuple(sorted(labels)))
            sums[k] = sums.get(k, 0) + total
        for (which, key), n in sums.items():
            fam = families[which]
            fam.add_sample(f"{fam.name}_total", dict(key), n)
        yield from (f for f in families.values() if f.samples)

    def drain(self) -> tuple[list[pb.RequestSeries], list[pb.TcpSeries]]:
        """The pending denials as report series (and reset the pending counts)."""
        from nodeagent.observe.stats.report import peer_pb

        requests, tcp = [], []
        for key, counts in self.table.items():
            pending = counts[1]
            if not pending:
                continue
            counts[1] = 0
            protocol, direction, src, dst, tls, policy, status, grpc_status = key
            if direction not in _DIRECTIONS:
                continue
            if protocol == "tcp":
                tcp.append(
                    pb.TcpSeries(
                        direction=_DIRECTIONS[direction],
                        src=peer_pb(src),
                        dst=peer_pb(dst),
                        tls=tls,
                        authz_denied=pending,
                    )
                )
                continue
            series = pb.RequestSeries(
                direction=_DIRECTIONS[direction],
                src=peer_pb(src),
                dst=peer_pb(dst),
                protocol=_PROTOCOLS.get(protocol, pb.HTTP1),
                status_code=status,
                # A denial is the server refusing, not failing: 403 is a success by Linkerd's
                # rules; PERMISSION_DENIED is a gRPC error, a failure.
                classification=pb.FAILURE if grpc_status else pb.SUCCESS,
                tls=tls,
                responses=pending,
                authz_deny=policy,
            )
            if grpc_status is not None:
                series.grpc_status = grpc_status
            requests.append(series)
        return requests, tcp
