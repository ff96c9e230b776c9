"""HTTP/2 connections on the relay that should move: told to go away when their Service changes.

An outbound HTTP/2 connection that stayed on the relay (one ready endpoint, no route: see
nodeagent.proxy.l7.takeover) is pinned to the endpoint chosen when it was opened. A gRPC channel
keeps one such connection for its life, so when that endpoint is replaced (a rollout) its calls
would follow the old pod to its end, and when the Service grows they would never spread. When a
table update changes such a Service, each of its relayed connections is looked at again: if its
endpoint is no longer a ready endpoint, or a new connection would now take the L7 path (several
endpoints, or a route), and the connection speaks HTTP/2, the client is sent a graceful GOAWAY
(nodeagent.protocol.http2_goaway) between two of the server's frames, preferably at a moment
with no stream in flight (up to LEFT_IDLE_WAIT_S / GREW_IDLE_WAIT_S: some HTTP/2 libraries end
a connection at any GOAWAY). The streams in flight go on being relayed; the client opens its
next connection through the agent again and is balanced afresh; the agent closes the old one
once its streams are done. The work is done per table update, never per relayed chunk: a
connection costs one registry entry (~2.4 us to make), and only one being drained carries a
gate (and a timer) until its GOAWAY is out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nodeagent.observe.metrics import H2_GOAWAYS
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
# How long a GOAWAY waits for a moment with no stream in flight: a connection whose endpoint
# left (the pod is on its way out) and one whose Service grew (nothing is urgent).
LEFT_IDLE_WAIT_S = 1.0
GREW_IDLE_WAIT_S = 10.0
# How often a drained connection is looked at while its GOAWAY waits, and then until its
# streams are done (it is then closed).
PENDING_CHECK_S = 0.1
CLOSE_CHECK_S = 1.0


@dataclass(slots=True)
class _Pinned:
    vip: str
    port: int
    endpoint: tuple[str, int]
    tap: ConnectionTap


class GoawayGate:
    """Stands on a relay until its GOAWAY is out, then steps aside (the relay's plain path
    again). Until `idle_by` it waits for a moment with no stream in flight at the end of a
    server chunk (a client whose HTTP/2 library ends its connection at any GOAWAY, as
    python-hyper's h2 does, then loses nothing either); after that the GOAWAY goes at the next
    frame boundary whatever is in flight."""

    __slots__ = ("relay", "observer", "frame", "idle_by", "cursor")

    def __init__(
        self, relay: Relay, observer: Http2Observer, frame: bytes, *, idle_by: float
    ) -> None:
        self.relay = relay
        self.observer = observer
        self.frame = frame
        self.idle_by = idle_by
        self.cursor: FrameCursor | None = None

    def client(self, data: bytes) -> tuple[bytes, bytes, bool]:
        return data, b"", False

    def server(self, data: bytes) -> tuple[bytes, bool]:
        # The tap has fed `data` to the observer already: its state is that of the end of data.
        cursor = self.cursor
        if cursor is None:
            if self.observer.failed is not None or self.observer.closed:
                self._give_up()  # the tap stopped following the frames: so must the gate
                return data, False
            if self.ready_now():
                return data + self._out(), False
            return data, False
        at = cursor.find(data)
        if at is None:
            return data, False
        return data[:at] + self._out() + data[at:], False

    def ready_now(self) -> bool:
        """Whether the GOAWAY may go right after what was relayed so far; past `idle_by`, the
        frame boundaries are followed from here on until one comes."""
        here = FrameCursor.of_reader(self.observer.server)
        if not here.at_boundary:
            if time.monotonic() >= self.idle_by:
                self.cursor = here
            return False
        return not self.observer.streams or time.monotonic() >= self.idle_by

    def _give_up(self) -> None:
        if self.relay.gate is self:
            self.relay.gate = None

    def _out(self) -> bytes:
        if self.relay.gate is self:
            self.relay.gate = None
        return self.frame


def send_goaway(
    relay: Relay, tap: ConnectionTap, *, call_later: Scheduler, idle_wait: float = 0.0
) -> bool:
    """Tell an HTTP/2 client on `relay` to go away (graceful: its streams go on), preferring a
    moment with no stream in flight for up to `idle_wait` seconds; False when the connection is
    not (or no longer) observed as HTTP/2, or another gate stands on it."""
    observer = tap.observer
    if tap.protocol is not detect.Protocol.HTTP2 or not isinstance(observer, Http2Observer):
        return False
    if observer.failed is not None or observer.closed or relay.gate is not None:
        return False
    if relay.tap is not tap or relay.down.lost:
        return False
    gate = GoawayGate(relay, observer, goaway_frame(), idle_by=time.monotonic() + idle_wait)
    if gate.ready_now():
        relay.write_to_client(gate.frame)
    else:
        relay.gate = gate
    _Drained(relay, gate, call_later)
    return True


class _Drained:
    """One timer per drained connection. While its GOAWAY waits for a quiet moment and no
    server bytes come (the client's streams wait on a slow server, or none is open and the
    client is idle), the timer puts it out. Then it closes the connection once its streams are
    done: well-behaved clients close it themselves, but one that keeps it open idle would hold
    the old pod's connection (and a server that drains its connections before exiting) until
    the server ends it. A stream the client sent before it read the GOAWAY may still be on its
    way, so the connection is closed only when no stream is open and none was opened for a
    whole period (far longer than a round trip in a cluster) after the GOAWAY went out."""

    __slots__ = ("relay", "gate", "call_later", "seen", "timer")

    def __init__(self, relay: Relay, gate: GoawayGate, call_later: Scheduler) -> None:
        self.relay = relay
        self.gate = gate
        self.call_later = call_later
        self.seen = -1  # the last client stream at the previous check; none yet
        self.timer: Any = call_later(self._period(), self.check)
        relay.on_finish(self.cancel)

    def _period(self) -> float:
        return PENDING_CHECK_S if self.relay.gate is self.gate else CLOSE_CHECK_S

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def check(self) -> None:
        self.timer = None
        relay, gate, obs = self.relay, self.gate, self.gate.observer
        if obs.failed is not None or obs.closed or relay.down.lost:
            if relay.gate is gate and gate.cursor is None:
                relay.gate = None  # no longer followed: no GOAWAY after all
            return
        if relay.gate is gate:
            if gate.cursor is None and gate.ready_now():
                relay.gate = None
                relay.write_to_client(gate.frame)
        elif not obs.streams and obs.last_client_stream == self.seen:
            relay.close()
            return
        else:
            self.seen = obs.last_client_stream
        self.timer = self.call_later(self._period(), self.check)


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
        if service is None or tap.protocol is detect.Protocol.OPAQUE:
            return  # opaque by declaration (the tap skipped detection): never HTTP/2 to it
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
            resolved: dict[tuple[str, int], tuple[Route, bool]] = {}
            for relay, pinned in list(held.items()):
                dst = (pinned.vip, pinned.port)
                if dst not in resolved:
                    resolved[dst] = (routes.resolve(*dst), route_table.routed(key, pinned.port))
                route, routed = resolved[dst]
                if route.service is None or route.service.key != key:
                    continue  # the VIP now names another Service (or none): not ours to judge
                why = why_move(pinned.endpoint, route, routed=routed)
                if not why:
                    continue
                if pinned.tap.protocol is None:
                    continue  # not decided yet: looked at again on the next update
                del held[relay]  # once: a connection is told to go away at most once
                idle_wait = LEFT_IDLE_WAIT_S if why == LEFT else GREW_IDLE_WAIT_S
                if send_goaway(relay, pinned.tap, call_later=call_later, idle_wait=idle_wait):
                    told += 1
                    H2_GOAWAYS.labels("endpoint_left" if why == LEFT else "balancing").inc()
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
