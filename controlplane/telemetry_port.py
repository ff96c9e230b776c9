"""What the public API needs from the telemetry store (a Protocol: either side may change).

The store groups the traffic it holds by one resource kind and answers with a `StatRow` of
golden metrics per group (the one row type from the query to the public API's message); the
public API joins those with the index (meshed pods, resources with no traffic yet)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controlplane.telemetry import query
from controlplane.telemetry.query import StatRow
from controlplane.telemetry.routes import RouteRow, route_stats
from controlplane.telemetry.store import TelemetryStore

__all__ = ["AgentState", "BadQuery", "EdgeStats", "NoTelemetry", "RouteRow", "Selector",
           "StatRow", "StoreTelemetry", "TelemetryPort"]  # fmt: skip


class BadQuery(ValueError):
    """A query the store refuses (bad window, --from with --to, ...); the message is for users."""


@dataclass(frozen=True, slots=True)
class Selector:
    """A resource on one end of traffic; kind is canonical (deployment, pod, namespace, service,
    node); empty namespace/name match any."""

    kind: str
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class EdgeStats:
    src: Selector
    dst: Selector
    src_identity: str
    dst_identity: str
    requests: int
    tcp_connections: int
    tls: bool  # every request/connection on the edge went over mTLS


@dataclass(frozen=True, slots=True)
class AgentState:
    node: str
    version: str
    last_report_unix_ms: int
    pods_enrolled: int
    open_connections: int
    cpu_seconds: float
    rss_bytes: int


class TelemetryPort(Protocol):
    def stat(
        self,
        *,
        group_by: str,
        namespace: str,
        source: Selector | None,
        destination: Selector | None,
        window_s: int,
    ) -> list[StatRow]:
        """Traffic grouped by `group_by` (inbound traffic of each group, or, with `destination`,
        the group's outbound traffic to it; with `source`, only traffic coming from it)."""
        ...

    def edges(self, *, kind: str, namespace: str, window_s: int) -> list[EdgeStats]: ...

    def routes(
        self, *, services: list[tuple[str, str]], source: Selector | None, window_s: int
    ) -> list[RouteRow]:
        """Per (Service, route) rows of the requests to `services` (namespace, name) that the
        clients' L7 path answered, only those from `source` when given."""
        ...

    def agents(self) -> list[AgentState]: ...

    def enrolled_pods(self) -> set[tuple[str, str, str]]:
        """(namespace, name, uid) of every pod an agent reporting now has enrolled."""
        ...


class NoTelemetry:
    """Stands in until a store is wired: every query answers 'no traffic'."""

    def stat(self, **_: object) -> list[StatRow]:
        return []

    def edges(self, **_: object) -> list[EdgeStats]:
        return []

    def routes(self, **_: object) -> list[RouteRow]:
        return []

    def agents(self) -> list[AgentState]:
        return []

    def enrolled_pods(self) -> set[tuple[str, str, str]]:
        return set()


# Agents report every second: one silent for longer is not there to proxy its pods.
LIVE_AGENT_SECONDS = 15.0


class StoreTelemetry:
    """The port over controlplane.telemetry's TelemetryStore and its queries."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store

    def _resource(self, sel: Selector) -> query.Resource:
        return query.Resource(sel.kind, sel.namespace, sel.name)

    def stat(
        self,
        *,
        group_by: str,
        namespace: str,
        source: Selector | None,
        destination: Selector | None,
        window_s: int,
    ) -> list[StatRow]:
        try:
            return query.stat(
                self.store,
                self._resource(Selector(group_by, namespace)),
                from_=self._resource(source) if source else None,
                to=self._resource(destination) if destination else None,
                window_s=window_s,
                # What the agents reported a second ago counts at once.
                include_current=True,
            )
        except (query.InvalidQuery, query.UnknownResourceKind) as exc:
            raise BadQuery(str(exc)) from exc

    def plain_traffic(
        self, *, group_by: str, namespace: str, window_s: int, quantiles: tuple[float, ...]
    ) -> dict[tuple[str, str], query.PlainTraffic]:
        """`stat` without source or destination, as query.plain_traffic's tuples (the rows a
        Stat answer built next to the store reads: controlplane.stat_answer)."""
        try:
            return query.plain_traffic(
                self.store, self._resource(Selector(group_by, namespace)), window_s=window_s,
                include_current=True, quantiles=quantiles,
            )  # fmt: skip
        except (query.InvalidQuery, query.UnknownResourceKind) as exc:
            raise BadQuery(str(exc)) from exc

    def routes(
        self, *, services: list[tuple[str, str]], source: Selector | None, window_s: int
    ) -> list[RouteRow]:
        try:
            return route_stats(
                self.store,
                services=set(services),
                source=self._resource(source) if source else None,
                window_s=window_s,
            )
        except (query.InvalidQuery, query.UnknownResourceKind) as exc:
            raise BadQuery(str(exc)) from exc

    def edges(self, *, kind: str, namespace: str, window_s: int) -> list[EdgeStats]:
        try:
            found = query.edges(self.store, namespace=namespace, window_s=window_s)
        except query.InvalidQuery as exc:
            raise BadQuery(str(exc)) from exc
        return [
            EdgeStats(
                src=Selector(kind, e.src_namespace, e.src),
                dst=Selector(kind, e.dst_namespace, e.dst),
                src_identity=",".join(sorted(e.client_identities)),
                dst_identity=",".join(sorted(e.server_identities)),
                requests=e.requests,
                tcp_connections=e.connections,
                tls=e.secured,
            )
            for e in found
        ]

    def agents(self) -> list[AgentState]:
        return [
            AgentState(
                node=n.node,
                version=n.version,
                last_report_unix_ms=int(n.last_report * 1000),
                pods_enrolled=n.pods_enrolled,
                open_connections=n.open_connections,
                cpu_seconds=n.cpu_seconds,
                rss_bytes=n.rss_bytes,
            )
            for n in query.nodes(self.store)
        ]

    def enrolled_pods(self) -> set[tuple[str, str, str]]:
        since = self.store.clock() - LIVE_AGENT_SECONDS
        out: set[tuple[str, str, str]] = set()
        for n in self.store.nodes.values():
            if n.last_report >= since:
                out |= n.enrolled
        return out
