"""When an outbound connection leaves the relay for the L7 path, and the agent side of that path.

The rule (DESIGN "Traffic policy"): a connection to a Service VIP takes the L7 path when
- a mesh route (HTTPRoute/GRPCRoute) attaches to that Service port and the client speaks
  HTTP/1.x or HTTP/2 (prior knowledge, as gRPC does), or
- no route attaches but the client speaks HTTP/2 and the port has more than one ready endpoint
  (per-request balancing: one gRPC channel must not pin one pod).
Everything else stays on the relay: pod IPs, opaque ports, other protocols, HTTP/1 without a
route (a new connection per request already spreads; keep-alive clients are balanced per
connection as before), TLS from the app. An HTTP/2 connection left on the relay is told to go
away (graceful GOAWAY) when its endpoint leaves or its Service grows (nodeagent.proxy.h2drain):
the client's next connection comes back here and is balanced afresh.

Upstream connections of the L7 path are dialled straight to the chosen endpoint
(nodeagent.proxy.l7.dial) with the outbound relay's own dial: the client pod's identity and mark,
the mTLS tunnel to a meshed endpoint's agent, the fail-closed rules. The L7 path adds no second
way to reach a pod and is never plaintext where the relay would not be. (Until 2026-12 they went
through the pod's outbound listener a second time: a second accept, routing and observation of
every request.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from nodeagent.observe import peers
from nodeagent.observe.events import Peer
from nodeagent.protocol.detect import KNOWN_OPAQUE_PORTS
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.l7 import dial as l7dial
from nodeagent.proxy.l7 import http1, http2
from nodeagent.proxy.l7.balancing import RequestBalancer
from nodeagent.proxy.l7.metrics import RouteMetrics
from nodeagent.proxy.routing import Route, Target
from nodemesh.model import PodKey, ServiceKey

if TYPE_CHECKING:
    from nodeagent.proxy.listeners import PodListeners

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHODS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"TRAC")
PEEK_TIMEOUT = 0.3  # the relay's own protocol detection waits as long
# Without a route the L7 path is only for an HTTP/2 client (per-request balancing), which sends
# its preface as soon as it has connected: waiting longer would hold the first connection of a
# server-first protocol (before the agent remembers it as such) for the whole PEEK_TIMEOUT.
NO_ROUTE_PEEK_TIMEOUT = 0.05


@dataclass
class PodL7:
    """The L7 path's state for one client pod: its upstream pools and balancer."""

    ctx: http1.RouteContext
    h2: http2.H2Pool

    def close(self) -> None:
        self.ctx.upstreams.close()
        self.h2.close()


def _targets(pod: PodListeners, key: ServiceKey, port: int) -> list[Target]:
    rt = pod.runtime
    service = rt.table.services.get(key)
    if service is None or not service.cluster_ips:
        return []
    return list(rt.routes.resolve(service.cluster_ips[0], port).targets)


def _client(pod: PodListeners) -> Peer:
    """The client pod as the route metrics name it (the table may learn its workload later)."""
    p = pod.pod
    info = pod.runtime.table.pod(PodKey(p.namespace, p.name))
    return peers.of_pod(info, ip=p.ip, namespace=p.namespace, name=p.name)


def _answered_by(pod: PodListeners, outcome: http1.Outcome) -> Peer:
    """The endpoint a request went to, or the Service when none was reached."""
    service = pod.runtime.table.services.get(outcome.service)
    if outcome.endpoint is not None:
        return peers.of_target(outcome.endpoint, service)
    ip = service.cluster_ips[0] if service is not None and service.cluster_ips else ""
    key = outcome.service
    return peers.peer(ip, namespace=key.namespace, service=key.name)


def _tunnelled(pod: PodListeners, outcome: http1.Outcome) -> bool:
    target = outcome.endpoint
    return target is not None and target.meshed and pod.runtime.certs is not None


def _state(pod: PodListeners, dialer: l7dial.Dial) -> PodL7:
    rt = pod.runtime
    held = rt.l7.get(pod.pod.netns)
    if held is None:
        metrics = RouteMetrics(
            src=partial(_client, pod),
            sink=rt.sink,
            dst=partial(_answered_by, pod),
            tls=partial(_tunnelled, pod),
        )
        ctx = http1.RouteContext(
            routes=rt.table.routes,
            upstreams=http1.Upstreams(
                targets=partial(_targets, pod),
                connect=partial(l7dial.connect, pod, dialer, protocol="http1"),
                balancer=RequestBalancer(),
            ),
            observe=metrics.observe,
        )
        h2 = http2.H2Pool(connect=partial(l7dial.connect, pod, dialer, protocol="http2"))
        held = rt.l7[pod.pod.netns] = PodL7(ctx, h2)
    return held


async def try_take(relay: Relay, pod: PodListeners, route: Route, *, dial: l7dial.Dial) -> bool:
    """Serve the connection on the L7 path if the rule says so (True: it was, and is over).
    `dial` opens upstream connections (outbound.dial_upstream)."""
    service = route.service
    if service is None or route.opaque or not route.targets:
        return False
    rt = pod.runtime
    routed = rt.table.routes.routed(service.key, route.port)
    if not routed and len(route.targets) < 2:
        return False
    if route.port in KNOWN_OPAQUE_PORTS or rt.server_first.seen(
        route.ip, route.port, now=time.monotonic()
    ):
        return False  # the server speaks first: waiting for the client's bytes would stall it
    # Peek (without consuming) at what the app sends first.
    await relay.wait_for_bytes(4, PEEK_TIMEOUT if routed else NO_ROUTE_PEEK_TIMEOUT)
    head = bytes(relay.early[:4])
    if head == H2_PREFACE[:4]:
        await relay.wait_for_bytes(len(H2_PREFACE), PEEK_TIMEOUT)
        if not bytes(relay.early).startswith(H2_PREFACE):
            return False
        kind = "h2"
    elif routed and head in _METHODS:
        # The whole first request head: an Upgrade (WebSocket) or CONNECT stays on the relay,
        # which turns the connection opaque after the handshake.
        while b"\r\n\r\n" not in relay.early and len(relay.early) < 16 * 1024:
            if not await relay.wait_for_bytes(len(relay.early) + 1, PEEK_TIMEOUT):
                break
        first = bytes(relay.early).split(b"\r\n\r\n", 1)[0].lower()
        if first.startswith(b"connect ") or b"\nupgrade:" in first:
            return False
        kind = "http1"
    else:
        return False
    state = _state(pod, dial)
    started = time.monotonic()
    reader, writer = relay.hand_over()
    try:
        if kind == "h2":
            await http2.serve(
                state.ctx, state.h2, reader, writer, service=service.key, port=route.port
            )
        else:
            await http1.serve(state.ctx, reader, writer, service=service.key, port=route.port)
    except Exception:  # noqa: BLE001 (a bug on one connection must not reach the listener)
        log.exception("L7 path failed for %s:%s", route.ip, route.port)
    finally:
        writer.close()
        relay.handed_over_done()
        log.debug(
            "L7 %s connection to %s done in %.3fs", kind, service.key, time.monotonic() - started
        )
    return True
