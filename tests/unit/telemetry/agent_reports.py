"""A settable clock and an agent-like report builder for the telemetry tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from controlplane.telemetry import TelemetryStore, parse_report
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.histogram import LatencyHistogram


@dataclass
class Clock:
    now: float = 1_000_000.0  # a multiple of 10: bucket boundaries fall on round numbers

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def peer(ns: str = "", deploy: str = "", pod: str = "", svc: str = "", ident: str = "") -> pb.Peer:
    return pb.Peer(namespace=ns, deployment=deploy, pod=pod, service=svc, identity=ident)


WEB = peer("emojivoto", "web", "web-1", ident="spiffe://cluster.local/ns/emojivoto/sa/web")
EMOJI = peer(
    "emojivoto", "emoji", "emoji-1", "emoji-svc", "spiffe://cluster.local/ns/emojivoto/sa/emoji"
)
VOTING = peer(
    "emojivoto", "voting", "voting-1", "voting-svc", "spiffe://cluster.local/ns/emojivoto/sa/voting"
)


@dataclass
class ReportBuilder:
    """Accumulates requests like an agent does for one second, then emits an AgentReport."""

    node: str = "node1"
    sequence: int = 0
    series: dict[tuple, tuple[int, LatencyHistogram]] = field(default_factory=dict)
    tcp: list[pb.TcpSeries] = field(default_factory=list)

    def request(
        self,
        latencies_us: Iterable[int],
        *,
        src: pb.Peer = WEB,
        dst: pb.Peer = EMOJI,
        direction: int = pb.INBOUND,
        status: int = 200,
        success: bool = True,
        tls: bool = True,
        protocol: int = pb.HTTP1,
    ) -> None:
        key = (
            direction,
            src.SerializeToString(),
            dst.SerializeToString(),
            protocol,
            status,
            success,
            tls,
        )
        n, hist = self.series.get(key, (0, LatencyHistogram()))
        for us in latencies_us:
            hist.record(us)
            n += 1
        self.series[key] = (n, hist)

    def report(self) -> pb.AgentReport:
        self.sequence += 1
        out = pb.AgentReport(
            node=self.node,
            agent_version="test",
            sequence=self.sequence,
            interval_ms=1000,
            load=pb.AgentLoad(pods_enrolled=3, open_connections=2, cpu_seconds=self.sequence * 0.1),
        )
        for (direction, src, dst, protocol, status, success, tls), (n, hist) in self.series.items():
            buckets, counts = hist.to_sparse()
            out.requests.append(
                pb.RequestSeries(
                    direction=direction,
                    src=pb.Peer.FromString(src),
                    dst=pb.Peer.FromString(dst),
                    protocol=protocol,
                    status_code=status,
                    classification=pb.SUCCESS if success else pb.FAILURE,
                    tls=tls,
                    responses=n,
                    latency=pb.Histogram(buckets=buckets, counts=counts, sum_us=hist.sum_us),
                )
            )
        out.tcp.extend(self.tcp)
        self.series.clear()
        self.tcp = []
        return out

    def send(self, store: TelemetryStore) -> None:
        report = self.report()
        store.ingest(parse_report(report, encoded_size=report.ByteSize()))
