"""A sink that keeps what the data plane reported, for assertions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodeagent.observe.events import (
    Peer,
    RequestObserved,
    RequestStarted,
    RouteObserved,
    TcpClosed,
    TcpOpened,
)


@dataclass
class RecordingSink:
    opened: list[TcpOpened] = field(default_factory=list)
    closed: list[TcpClosed] = field(default_factory=list)
    requests: list[RequestObserved] = field(default_factory=list)
    tap: bool = False
    tapped: list[tuple[str, Any]] = field(default_factory=list)
    routed: list[RouteObserved] = field(default_factory=list)

    def tcp_opened(self, ev: TcpOpened) -> None:
        self.opened.append(ev)

    def tcp_closed(self, ev: TcpClosed) -> None:
        self.closed.append(ev)

    def request(self, ev: RequestObserved) -> None:
        self.requests.append(ev)

    def tapping(self, src: Peer, dst: Peer) -> bool:
        return self.tap

    def request_started(self, ev: RequestStarted) -> None:
        self.tapped.append(("request", ev.req_id))

    def response_started(self, req_id: int, status: int | None, at: float) -> None:
        self.tapped.append(("response", (req_id, status)))

    def route(self, ev: RouteObserved) -> None:
        self.routed.append(ev)
