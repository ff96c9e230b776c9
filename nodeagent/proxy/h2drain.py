"""HTTP/2 connections on the relay that should move: told to go away when their Service changes.

An outbound HTTP/2 connection that stayed on the relay (one ready endpoint, no route: see
nodeagent.proxy.l7.takeover) is pinned to the endpoint chosen when it was opened. A gRPC channel
keeps one such connection for its life, so when that endpoint is replaced (a rollout) its calls
would follow the old pod to its end, and when the Service grows they would never spread. When a
table update changes such a Service, each of its relayed connections is looked at again: if its
endpoint is no longer a ready endpoint, or a new connection would now take the L7 path (several
endpoints, or a route), and the connection speaks HTTP/2, the client is sent a graceful GOAWAY
(nodeagent.protocol.http2_goaway) at the next frame boundary of the server's bytes. The streams
in flight go on being relayed; the client opens its next connection through the agent again and
is balanced afresh. The work is done per table update, never per relayed chunk: a connection
costs one registry entry, and only one being drained carries a gate until its GOAWAY is out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nodeagent.protocol import detect
from nodeagent.protocol.http2 import Http2Observer
from nodeagent.protocol.http2_goaway import FrameCursor, goaway_frame
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.l7relay import ConnectionTap, Scheduler
from nodeagent.proxy.routing import Route, Routes, Target
from nodemesh.model import ServiceKey
from nodemesh.routing.table import RouteTable

log = logging.getLogger(__name__)

# Why a connection is drained: its endpoint left, or the Service grew (or got a route).
LEFT = "endpoint left"
GREW = "per-request balancing"
# How often a drained connection is looked at until its streams are done (then it is closed).
CLOSE_CHECK_S = 1.0


@dataclass(slots=True)
class _Pinned:
    vip: str
    port: int
    endpoint: tuple[str, int]
    tap: ConnectionTap


class GoawayGate:
    """Stands on a relay until its GOAWAY is out: adds it at the first frame boundary of the
    server's bytes, then steps aside (the relay's plain path again)."""

    __slots__ = ("relay", "cursor", "frame")

    def __init__(self, relay: Relay, cursor: FrameCursor, frame: bytes) -> None:
        self.relay = relay
        self.cursor = cursor
        self.frame = frame

    def client(self, data: bytes) -> tuple[bytes, bytes, bool]:
        return data, b"", False

    def server(self, data: bytes) -> tuple[bytes, bool]:
        at = self.cursor.find(data)
        if at is None:
            return data, False
        if self.relay.gate is self:
            self.relay.gate = None
        return data[:at] + self.frame + data[at:], False


def send_goaway(relay: Relay, tap: ConnectionTap, *, call_later: Scheduler) -> bool:
    """Tell an HTTP/2 client on `relay` to go away (graceful: its streams go on); False when the
    connection is not (or no longer) observed as HTTP/2, or another gate stands on it."""
    observer = tap.observer
    if tap.protocol is not detect.Protocol.HTTP2 or not isinstance(observer, Http2Observer):
        return False
    if observer.failed is not None or observer.closed or relay.gate is not None:
        return False
    if relay.tap is not tap or relay.down.lost:
        return False
    cursor = FrameCursor.of_reader(observer.server)
    frame = goaway_frame()
    if cursor.at_boundary:
        relay.write_to_client(frame)
    else:
        relay.gate = GoawayGate(relay, cursor, frame)
    _CloseWhenDone(relay, observer, call_later)
    return True


class _CloseWhenDone:
    """Closes a drained connection once its streams are done. Well-behaved clients close it
    themselves; one that keeps it open idle would hold the old pod's connection (and a server
    that drains its connections before exiting) until the server ends it. A stream the client
    sent before it read the GOAWAY may still be on its way, so the connection is closed only
    when no stream is open and none was opened for a whole period (far longer than a round
    trip in a cluster) after the GOAWAY went out. One timer per drained connection."""

    __slots__ = ("relay", "observer", "call_later", "seen", "timer")

    def __init__(self, relay: Relay, observer: Http2Observer, call_later: Scheduler) -> None:
        self.relay = relay
        self.observer = observer
        self.call_later = call_later
        self.seen = -1  # the last client stream at the previous check; none yet
        self.timer: Any = call_later(CLOSE_CHECK_S, self.check)
        relay.on_finish(self.cancel)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check(self) -> None:
        self.timer = None
        obs = self.observer
        if obs.failed is not None or obs.closed or self.relay.down.lost:
            return  # not followed any more, or over
        out = self.relay.gate is None  # the GOAWAY has been written
        if out and not obs.streams and obs.last_client_stream == self.seen:
            self.relay.close()
            return
        self.seen = obs.last_client_stream if out else -1
        self.timer = self.call_later(CLOSE_CHECK_S, self.check)


def why_move(pinned_to: tuple[str, int], route: Route, *, routed: bool) -> str:
    """Why a connection pinned to `pinned_to` should move after a table update, or ""."""
    if all(t.key != pinned_to for t in route.targets):
        return LEFT
    if len(route.targets) > 1 or routed:
        return GREW
    return ""


class PinnedRelays:
    """The relayed connections to Service VIPs, by Service: looked at when the Service changes."""

    def __init__(self) -> None:
        self.by_service: dict[ServiceKey, dict[Relay, _Pinned]] = {}
        self.drained = 0

    def watch(self, relay: Relay, route: Route, target: Target, tap: ConnectionTap) -> None:
        service = route.service
        if service is None or route.opaque or target.opaque:
            return
        held = self.by_service.setdefault(service.key, {})
        held[relay] = _Pinned(route.ip, route.port, target.key, tap)
        relay.on_finish(lambda: self._forget(service.key, relay))

    def _forget(self, key: ServiceKey, relay: Relay) -> None:
        held = self.by_service.get(key)
        if held is not None:
            held.pop(relay, None)
            if not held:
                del self.by_service[key]

    def services_changed(
        self,
        keys: Iterable[ServiceKey],
        *,
        routes: Routes,
        route_table: RouteTable,
        call_later: Scheduler,
    ) -> int:
        """Look again at the connections of the Services a table update touched; how many
        were told to go away."""
        told = 0
        for key in keys:
            held = self.by_service.get(key)
            if not held:
                continue
            for relay, pinned in list(held.items()):
                route = routes.resolve(pinned.vip, pinned.port)
                if route.service is None or route.service.key != key:
                    continue  # the VIP now names another Service (or none): not ours to judge
                routed = route_table.routed(key, pinned.port)
                why = why_move(pinned.endpoint, route, routed=routed)
                if not why:
                    continue
                if pinned.tap.protocol is None:
                    continue  # not decided yet: looked at again on the next update
                del held[relay]  # once: a connection is told to go away at most once
                if send_goaway(relay, pinned.tap, call_later=call_later):
                    told += 1
                    log.debug(
                        "HTTP/2 connection to %s:%d (%s:%d) told to go away: %s",
                        pinned.vip,
                        pinned.port,
                        *pinned.endpoint,
                        why,
                    )
            if not held:
                self.by_service.pop(key, None)
        self.drained += told
        return told
