"""The agent's ObservationSink: the data plane's events go to the aggregate (for /metrics and
the telemetry reports) and, while someone taps, to the tap subscriptions.

Interface: `AgentSink(node=...)` implements `nodeagent.observe.events.ObservationSink`; its
`aggregate` (nodeagent.observe.stats.series.Aggregate) feeds `AggregateCollector` and
`take_reports`, its `taps` (nodeagent.observe.stats.tapping.Taps) are driven by the tap client,
which sets `taps.emit`. Every method runs on the event loop thread and never blocks or awaits.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from nodeagent.observe import peers
from nodeagent.observe.events import (
    AuthzDenied,
    Peer,
    RequestObserved,
    RequestStarted,
    RouteObserved,
    TcpClosed,
    TcpOpened,
)
from nodeagent.observe.stats.series import DEFAULT_MAX_SERIES, Aggregate
from nodeagent.observe.stats.tapping import Taps
from nodemesh.api import tap_pb2

if TYPE_CHECKING:  # an annotation only: observe/ does not import upstream/
    from nodeagent.upstream.table import DestinationTable


def _drop(event: tap_pb2.TapEvent) -> None:
    pass


class AgentSink:
    def __init__(self, *, node: str, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.aggregate = Aggregate(max_series=max_series)
        self.taps = Taps(node=node, emit=_drop)
        # Bound methods looked up once: these run for every connection and request.
        self._opened = self.aggregate.tcp_opened
        self._closed = self.aggregate.tcp_closed
        self._record = self.aggregate.request
        # Tap ids for denied requests, apart from the data plane's own request ids.
        self._denied_ids = itertools.count(1 << 62)

    def forget_gone_pods(self, table: DestinationTable, *, now: float, grace: float) -> int:
        """Forget the series (and interned peers) of pods the table no longer knows, `grace`
        seconds after it stopped knowing them; returns how many series went. Nothing goes
        while the table is not synced: then every pod would look gone."""
        if not table.synced:
            return 0
        known = table.known_pods()
        peers.forget_gone(known)
        return self.aggregate.forget_gone(known, now=now, grace=grace)

    def tcp_opened(self, ev: TcpOpened) -> None:
        self._opened(ev)

    def tcp_closed(self, ev: TcpClosed) -> None:
        self._closed(ev)

    def request(self, ev: RequestObserved) -> None:
        self._record(ev)
        if self.taps.subscriptions:
            self.taps.request_ended(ev)

    def tapping(self, src: Peer, dst: Peer) -> bool:
        return self.taps.tapping(src, dst)

    def request_started(self, ev: RequestStarted) -> None:
        self.taps.request_started(ev)

    def response_started(self, req_id: int, status: int | None, at: float) -> None:
        self.taps.response_started(req_id, status, at)

    def authz_denied(self, ev: AuthzDenied) -> None:
        self.aggregate.denials.add(ev)
        if ev.protocol != "tcp" and self.taps.subscriptions and self.taps.tapping(ev.src, ev.dst):
            self.taps.denied(next(self._denied_ids), ev)

    def route(self, ev: RouteObserved) -> None:
        self.aggregate.routes.add(ev)
