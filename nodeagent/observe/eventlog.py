"""An observation sink that also writes every event as one JSON line (tests and debugging).

`EventLog(inner, path)` passes everything on to `inner` (the agent's real sink) and appends
`{"event": "tcp_opened" | "tcp_closed" | "request", ...fields}` lines to `path`, flushed per
line so a reader sees events as they happen. Enabled by the agent's hidden --record-events flag;
not for production traffic (one write per event on the loop thread).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from nodeagent.observe.events import (
    AuthzDenied,
    ObservationSink,
    Peer,
    RequestObserved,
    RequestStarted,
    RouteObserved,
    TcpClosed,
    TcpOpened,
)


class EventLog:
    def __init__(self, inner: ObservationSink, path: Path) -> None:
        self.inner = inner
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def _write(self, kind: str, ev: Any) -> None:
        record = {"event": kind, **dataclasses.asdict(ev)}
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def tcp_opened(self, ev: TcpOpened) -> None:
        self._write("tcp_opened", ev)
        self.inner.tcp_opened(ev)

    def tcp_closed(self, ev: TcpClosed) -> None:
        self._write("tcp_closed", ev)
        self.inner.tcp_closed(ev)

    def request(self, ev: RequestObserved) -> None:
        self._write("request", ev)
        self.inner.request(ev)

    def tapping(self, src: Peer, dst: Peer) -> bool:
        return self.inner.tapping(src, dst)

    def request_started(self, ev: RequestStarted) -> None:
        self.inner.request_started(ev)

    def response_started(self, req_id: int, status: int | None, at: float) -> None:
        self.inner.response_started(req_id, status, at)

    def authz_denied(self, ev: AuthzDenied) -> None:
        self._write("authz_denied", ev)
        self.inner.authz_denied(ev)

    def close(self) -> None:
        self.file.close()

    def route(self, ev: RouteObserved) -> None:
        self._write("route", ev)
        self.inner.route(ev)
