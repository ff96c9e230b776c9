"""What the public API needs from the telemetry store (a Protocol: either side may change).

The store groups the traffic it holds by one resource kind and answers with golden metrics per
group; the public API joins those with the index (meshed pods, resources with no traffic yet)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Selector:
    """A resource on one end of traffic; kind is canonical (deployment, pod, namespace, service,
    node); empty namespace/name match any."""

    kind: str
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class GroupStats:
    """Golden metrics of one group over the window."""

    namespace: str  # empty for node and namespace groups
    name: str
    requests: int = 0
    successes: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    tcp_open_connections: int = 0
    tcp_read_bytes: int = 0
    tcp_write_bytes: int = 0


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
    ) -> list[GroupStats]:
        """Traffic grouped by `group_by` (inbound traffic of each group, or, with `destination`,
        the group's outbound traffic to it; with `source`, only traffic coming from it)."""
        ...

    def edges(self, *, kind: str, namespace: str, window_s: int) -> list[EdgeStats]: ...

    def agents(self) -> list[AgentState]: ...


class NoTelemetry:
    """Stands in until a store is wired: every query answers 'no traffic'."""

    def stat(self, **_: object) -> list[GroupStats]:
        return []

    def edges(self, **_: object) -> list[EdgeStats]:
        return []

    def agents(self) -> list[AgentState]:
        return []
