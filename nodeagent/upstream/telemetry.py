"""The agent's telemetry stream: once a second, what changed, to the control plane's
Telemetry/Report (the same channel, TLS and bearer token as the destination client).

Reports are taken from the aggregate only while a stream is up (a new stream gets one, then
more once the control plane has acknowledged something); while it is down the aggregate keeps
merging into its pending deltas (bounded by its series cap), so the first report after a
reconnect carries the whole outage. Reports sent but not yet acknowledged when a
stream breaks are sent again on the next one (at most `MAX_UNACKED`; older ones are dropped and
counted): the control plane may then count a second at most twice, but never loses an outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from nodeagent.observe.metrics import REGISTRY
from nodeagent.observe.stats import load as agent_load
from nodeagent.observe.stats.report import Load, take_reports
from nodeagent.observe.stats.series import Aggregate
from nodeagent.upstream.channel import CallFailed, Channel, StreamCall, open_stream
from nodeagent.upstream.reconnecting import keep_streaming
from nodemesh import tasks
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.version import __version__

log = logging.getLogger(__name__)

METHOD = "/nodemesh.telemetry.v1.Telemetry/Report"
INTERVAL = 1.0
MAX_UNACKED = 30

TELEMETRY_CONNECTED = Gauge(
    "nodemesh_agent_telemetry_connected",
    "1 while the telemetry stream to the control plane is up",
    registry=REGISTRY,
)
TELEMETRY_REPORTS = Counter(
    "nodemesh_agent_telemetry_reports",
    "Telemetry reports by outcome (accepted, refused, resent, dropped)",
    ["result"],
    registry=REGISTRY,
)


class TelemetryClient:
    def __init__(
        self,
        *,
        channel: Channel,
        aggregate: Aggregate,
        node: str,
        pods_enrolled: Callable[[], int],
        enrolled_pods: Callable[[], list[tuple[str, str, str]]] | None = None,
        interval: float = INTERVAL,
        version: str = __version__,
    ) -> None:
        self.channel = channel
        self.aggregate = aggregate
        self.node = node
        self.pods_enrolled = pods_enrolled
        self.enrolled_pods = enrolled_pods
        self.interval = interval
        self.version = version
        self.connected = False
        self.sequence = 0
        self.accepted = 0
        self.refused = 0
        self._unacked: OrderedDict[int, pb.AgentReport] = OrderedDict()
        self._last_report = time.time()
        self._stream_acks = 0

    def load(self) -> Load:
        enrolled = tuple(self.enrolled_pods()) if self.enrolled_pods is not None else ()
        return Load(
            enrolled=enrolled,
            pods_enrolled=self.pods_enrolled(),
            open_connections=max(self.aggregate.open_connections, 0),
            cpu_seconds=agent_load.cpu_seconds(),
            rss_bytes=agent_load.rss_bytes(),
        )

    def take(self) -> list[pb.AgentReport]:
        """Everything pending now, as reports (each gets its sequence when it is sent)."""
        now = time.time()
        reports = take_reports(
            self.aggregate,
            node=self.node,
            version=self.version,
            load=self.load(),
            now_ms=int(now * 1000),
            interval_ms=int((now - self._last_report) * 1000),
        )
        self._last_report = now
        self.aggregate.expire_idle()
        return reports

    async def run(self) -> None:
        """Forever: open the stream, report every interval, back off and reopen when it ends."""

        async def one_stream() -> None:
            self._stream_acks = 0
            async with open_stream(self.channel, METHOD, pb.AgentReport, pb.ReportAck) as call:
                await self._stream(call)

        # A stream the control plane acknowledged reports on was up and working, not failing.
        await keep_streaming(
            "telemetry",
            one_stream,
            progressed=lambda: self._stream_acks > 0,
            after=lambda: self._set_connected(False),
            log=log,
        )

    async def _stream(self, call: StreamCall[pb.AgentReport, pb.ReportAck]) -> None:
        """One stream's life, until it breaks."""
        acks = tasks.spawn(self._read_acks(call), name="telemetry acks")
        try:
            # Whatever an earlier stream left unacknowledged goes first, under new numbers.
            backlog = list(self._unacked.values())
            self._unacked.clear()
            self.sequence = 0  # sequences count per stream
            for report in backlog:
                TELEMETRY_REPORTS.labels("resent").inc()
                await self._send(call, report)
            while not acks.done():
                # Until the control plane acknowledges something on this stream, send nothing
                # new: a stream that dies at once would otherwise carry the numbers off.
                if self._stream_acks or not self._unacked:
                    for report in self.take():
                        await self._send(call, report)
                await asyncio.wait({acks}, timeout=self.interval)
            ended = acks.result()
            if ended is not None:
                raise ended  # to the reconnect loop, which logs it once
            log.warning("telemetry stream ended; reconnecting")
        finally:
            if not acks.done():
                acks.cancel()

    async def _send(
        self, call: StreamCall[pb.AgentReport, pb.ReportAck], report: pb.AgentReport
    ) -> None:
        self.sequence += 1
        report.sequence = self.sequence
        self._unacked[self.sequence] = report
        while len(self._unacked) > MAX_UNACKED:
            self._unacked.popitem(last=False)
            TELEMETRY_REPORTS.labels("dropped").inc()
        await call.write(report)

    async def _read_acks(self, call: StreamCall[pb.AgentReport, pb.ReportAck]) -> CallFailed | None:
        """Read acknowledgements until the stream ends; its error is returned, not raised (a
        raising task would be logged as failed, and a control plane restart is routine)."""
        try:
            async for ack in call:
                self._ack(ack)
        except CallFailed as exc:
            return exc
        return None

    def _ack(self, ack: pb.ReportAck) -> None:
        self._stream_acks += 1
        self._unacked.pop(ack.sequence, None)
        if ack.accepted:
            self.accepted += 1
            TELEMETRY_REPORTS.labels("accepted").inc()
            self._set_connected(True)
        else:
            # A refused report is dropped whole by the control plane; sending it again
            # would be refused again.
            self.refused += 1
            TELEMETRY_REPORTS.labels("refused").inc()
            log.warning("telemetry report %d refused: %s", ack.sequence, ack.reason)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        TELEMETRY_CONNECTED.set(1 if value else 0)
