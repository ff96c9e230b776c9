"""Router mode: the agent as an explicit HTTP proxy on its node (port 4144, hostNetwork).

For apps configured to send through a router (HTTP_PROXY / HTTPS_PROXY = <node>:4144, Linkerd 1's
per-node proxy pattern) whether or not their pod is meshed: the app sends an absolute-form
request or a CONNECT; the router finds who calls (the pod of this node with the connection's
source address: the router serves its own node's pods only, any other caller gets 403), where
to (nodeagent.proxy.routerdest: a Service or pod of the mesh, else 502) and then dials exactly as
the caller's captured connection would (nodeagent.proxy.outbound.connect_route): balanced over
the Service's endpoints, mTLS through the tunnel to a meshed endpoint with the caller pod's own
identity, observed under the caller's name in metrics, `stat` and `tap`.

A meshed caller's upstream is made in its own netns (as its captured connections are); an
unmeshed caller's in the node's (the router cannot enter every pod on the node), so its tunnels
leave from the node's address, still mTLS with the pod's certificate (issued to this agent for
pods of its node that use the router). Unmeshed destinations are reached plainly, as a
captured connection to them is. The first request's head decides the upstream for the whole
connection; HTTP requests leave in origin form (nodeagent.protocol.explicitproxy.OriginForm).
A meshed caller's HTTP requests to a Service with mesh routes take the L7 path
(nodeagent.proxy.l7.takeover) through that same gate, as its captured requests do; an unmeshed
caller's cannot (the L7 path's upstreams are captured in the caller's own netns).

An upstream that cannot be opened is dialled again for up to RETRY_WINDOW before the answer is
502 (nothing of the request has left: a peer agent restarting, an endpoint replaced, a
certificate on its way); the router's 5xx answers are logged at warning level, rate-limited.

A router-compatible Service (nodemesh.io/router: "true", Service.router) is served here too:
a meshed pod's connection captured to its VIP (serve_host_routed) is read like the router
port's, and an origin-form request goes where its Host header names.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nodeagent.observe import peers
from nodeagent.observe.metrics import ROUTER_ANSWERS, PodTcpStats
from nodeagent.pod import PodAddress
from nodeagent.protocol import explicitproxy as xp
from nodeagent.proxy import failclosed, outbound, routerdest
from nodeagent.proxy.l4proxy import MAX_EARLY_BYTES, Relay
from nodeagent.proxy.l7 import takeover
from nodeagent.proxy.listeners import BACKLOG, PodListeners, ProxyRuntime
from nodeagent.proxy.routing import Route
from nodemesh import tasks
from nodemesh.model import PodInfo, PodKey
from nodemesh.ratelimit import TokenBucket

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 10.0  # a client that connected and sends no whole request head
# How long an unmeshed caller's identity is kept certified after its last router connection.
IDENTITY_KEEP_S = 600.0
NODE_NETNS = "/proc/self/ns/net"  # the agent's own: the node's (hostNetwork)
# A request whose upstream could not be opened is dialled again (nothing of it left yet) until
# this long after it came: what fails then is passing (a peer agent restarting, a certificate
# on its way, an endpoint replaced), and a 502 is final for the app, which would have to retry.
RETRY_WINDOW = 10.0
RETRY_PAUSE = 0.1  # doubled after each failure, up to RETRY_PAUSE_MAX
RETRY_PAUSE_MAX = 1.0
# Error answers (5xx) are logged at warning level, at most this many a second (the others are
# counted and the count is given with the next line logged).
WARN_RATE = 2.0


@dataclass(frozen=True)
class NodeCaller:
    """An unmeshed pod calling through the router: dialled from the node's netns."""

    pod: PodAddress
    runtime: ProxyRuntime
    netns: str = NODE_NETNS


class Router:
    def __init__(
        self,
        runtime: ProxyRuntime,
        *,
        host: str,
        port: int,
        node: str,
        cluster_domain: str,
        listeners_of: Callable[[str], PodListeners | None],
        identity_wanted: Callable[[], None] = lambda: None,
    ) -> None:
        self.runtime = runtime
        self.host, self.port = host, port
        self.node = node
        self.cluster_domain = cluster_domain
        # The enrolled (meshed) pod of this node with that IP, if any.
        self.listeners_of = listeners_of
        self.identity_wanted = identity_wanted
        # Identities of unmeshed callers -> last use (monotonic): their certificates are asked for.
        self.callers: dict[str, float] = {}
        self._seeded = False
        self.stats = PodTcpStats("outbound", "", "router")
        self.server: asyncio.Server | None = None
        self.sock: socket.socket | None = None

    def identities(self) -> set[str]:
        if not self._seeded and self.runtime.certs is not None:
            # A new agent process (restart, hand-over) knows its predecessor's callers by the
            # certificates it restored: they stay wanted (kept, not asked for again while the
            # next requests wait) until unused for IDENTITY_KEEP_S like any caller's.
            self._seeded = True
            now = time.monotonic()
            for identity in self.runtime.certs.held:
                self.callers.setdefault(identity, now)
        cutoff = time.monotonic() - IDENTITY_KEEP_S
        for identity in [i for i, t in self.callers.items() if t < cutoff]:
            del self.callers[identity]
        return set(self.callers)

    async def start(self, inherited: socket.socket | None = None) -> None:
        """Serve the router port: `inherited` is the previous agent's listening socket (hand-over,
        socket keeper) with what queued in it, else a new one is bound."""
        sock = inherited if inherited is not None else self._bind()
        self.sock = sock
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accepted, sock=sock)
        log.info(
            "router mode: explicit proxy on %s:%d (%s)",
            self.host,
            self.port,
            "socket taken over" if inherited is not None else "socket bound",
        )

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # A new agent that got no socket handed over binds beside the old one.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"router mode: cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        return sock

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.sock = None

    def _accepted(self) -> asyncio.Protocol:
        rt = self.runtime

        def start(relay: Relay) -> None:
            tasks.spawn(self._serve(relay), name="router")

        relay = Relay(self.stats, rt.relays, start)
        rt.peak_relays = max(rt.peak_relays, len(rt.relays))
        return relay.down

    async def _serve(self, relay: Relay) -> None:
        await guarded(relay, self._handle(relay), "router")

    async def _handle(self, relay: Relay) -> None:
        rt = self.runtime
        req = await read_head(relay)
        if req is None:
            return
        try:
            client_ip = relay.downstream_socket.getpeername()[0]
        except OSError:
            relay.decline("client went away")
            return
        if not rt.table.synced and not await outbound.table_known(relay, self):  # type: ignore[arg-type]
            ANSWERS.answer(relay, 502, f"{req.host}:{req.port}: {outbound.NO_TABLE}")
            return
        listeners = self.listeners_of(client_ip)
        info = (
            rt.table.pod(PodKey(listeners.pod.namespace, listeners.pod.name))
            if listeners is not None
            else rt.routes.local_pod_by_ip(client_ip)
        )
        if info is None:
            ANSWERS.answer(
                relay,
                403,
                f"caller {client_ip} is not a pod of node {self.node}: "
                "the router serves its own node's pods only",
            )
            return
        caller: outbound.Caller = listeners or NodeCaller(
            PodAddress(info.key.namespace, info.key.name, NODE_NETNS, info.ip), rt
        )
        await route_request(
            relay,
            req,
            caller,
            info,
            cluster_domain=self.cluster_domain,
            unmeshed_caller=self._unmeshed_caller if listeners is None else None,
        )

    def _unmeshed_caller(self, info: PodInfo, route: Route) -> None:
        """An unmeshed caller tunnelling to a meshed destination: its certificate is wanted."""
        rt = self.runtime
        if info.identity and (
            failclosed.upstream(
                meshed=any(t.meshed for t in route.targets),
                source_identity=info.identity,
                mtls=rt.certs is not None,
            )
            is failclosed.Upstream.TUNNEL
        ):
            if info.identity not in self.callers:
                self.callers[info.identity] = time.monotonic()
                self.identity_wanted()
            self.callers[info.identity] = time.monotonic()


class GatedRelay:
    """The relay as the L7 path sees it (nodeagent.proxy.l7.takeover): what the client sends
    reaches it through the router's gate (every request in origin form; the connection ends at
    a request for another destination), the rest is the relay's."""

    def __init__(self, relay: Relay, gate: xp.OriginForm) -> None:
        self.relay, self.gate = relay, gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self.relay, name)

    def hand_over(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raw, writer = self.relay.hand_over()
        gated = asyncio.StreamReader(limit=4 * MAX_EARLY_BYTES)

        async def pump() -> None:
            try:
                while chunk := await raw.read(MAX_EARLY_BYTES):
                    out, _, end = self.gate.client(chunk)
                    if out:
                        gated.feed_data(out)
                    if end:
                        break
            except (ConnectionError, OSError):
                pass
            finally:
                gated.feed_eof()

        tasks.spawn(pump(), name="router L7 gate")
        return gated, writer


class Answers:
    """The router's own answers (400, 403, 502...): counted, and 5xx logged at warning level
    with the destination and the cause, at most WARN_RATE lines a second (the rest counted)."""

    def __init__(self) -> None:
        self.warnings = TokenBucket(WARN_RATE)
        self.unlogged = 0  # error answers not logged since the last warning

    def answer(self, relay: Relay, status: int, reason: str) -> None:
        ROUTER_ANSWERS.labels(str(status)).inc()
        if status < 500:
            log.debug("router: %d %s", status, reason)
        elif self.warnings.admit():
            more = f" ({self.unlogged} more since the last one logged)" if self.unlogged else ""
            self.unlogged = 0
            log.warning("router: answered %d: %s%s", status, reason, more)
        else:
            self.unlogged += 1
        transport = relay.down.transport
        if transport is not None and not relay.down.lost:
            transport.write(xp.answer(status, reason))
        relay.decline(f"{status} {reason}")


ANSWERS = Answers()


async def read_head(relay: Relay, *, host_routed: bool = False) -> xp.ProxyRequest | None:
    """The first request's head, parsed; None once answered (or the client left)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEAD_TIMEOUT
    while not xp.head_complete(relay.early):
        if len(relay.early) > xp.MAX_HEAD:
            ANSWERS.answer(relay, 400, f"request head over {xp.MAX_HEAD} bytes")
            return None
        left = deadline - loop.time()
        if left <= 0 or not await relay.wait_for_bytes(len(relay.early) + 1, left):
            if relay.early:
                ANSWERS.answer(relay, 400, "incomplete request head")
            else:
                relay.decline("no request")
            return None
    try:
        return xp.parse_head(relay.early, host_routed=host_routed)
    except xp.ProxyRequestError as exc:
        ANSWERS.answer(relay, exc.status, exc.reason)
        return None


async def route_request(
    relay: Relay,
    req: xp.ProxyRequest,
    caller: outbound.Caller,
    info: PodInfo,
    *,
    cluster_domain: str,
    host_routed: bool = False,
    unmeshed_caller: Callable[[PodInfo, Route], None] | None = None,
) -> None:
    """Send the request's connection where its head names, as `caller`'s captured connection
    to there would go; the client gets the router's answer if that fails."""
    rt = caller.runtime
    try:
        ip, port = routerdest.resolve(
            rt.table,
            rt.routes,
            host=req.host,
            port=req.port,
            caller_namespace=info.key.namespace,
            cluster_domain=cluster_domain,
            port_given=req.port_given,
        )
    except xp.ProxyRequestError as exc:
        ANSWERS.answer(relay, exc.status, exc.reason)
        return
    route = rt.routes.resolve(ip, port)
    if route.service is not None and route.service.router:
        ANSWERS.answer(
            relay, 502, f"{req.host} is a router Service itself: name the destination Service"
        )
        return
    if unmeshed_caller is not None:
        unmeshed_caller(info, route)
    relay.consume(req.consumed)
    gate = None
    connected = None
    if req.connect:
        transport = relay.down.transport

        def connected() -> None:
            if transport is not None and not relay.down.lost:
                transport.write(xp.CONNECTED)
    else:
        relay.early[:0] = req.head
        gate = xp.OriginForm(host=req.host, port=req.port, host_routed=host_routed)
        # A meshed caller's requests to a Service with mesh routes take the L7 path as its
        # captured ones do (timeouts, retries, splits, filters), in origin form.
        gated: Any = GatedRelay(relay, gate)  # a Relay to the L7 path
        if isinstance(caller, PodListeners) and await takeover.try_take(gated, caller, route):
            return
    src = peers.of_pod(info, ip=info.ip, namespace=info.key.namespace, name=info.key.name)
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + RETRY_WINDOW, RETRY_PAUSE
    while True:
        error = await outbound.connect_route(
            relay, caller, route, info=info, src=src, gate=gate, connected=connected, report=False
        )
        if error is None:
            return
        if relay.down.lost or loop.time() + pause > deadline:
            break
        log.info("router: %s:%d: %s; dialling again in %.1f s", req.host, port, error, pause)
        await asyncio.sleep(pause)
        pause = min(2 * pause, RETRY_PAUSE_MAX)
        route = rt.routes.resolve(ip, port)  # endpoints may have changed meanwhile
    relay.stats.failures.inc()
    outbound.report_failed(
        rt.sink,
        conn_id=next(rt.conn_ids),
        direction="outbound",
        src=src,
        dst=peers.of_target(route.targets[0], route.service) if route.known else peers.peer(ip),
        tls=False,
        error=error,
    )
    ANSWERS.answer(relay, 502, f"{req.host}:{port}: {error}")


async def serve_host_routed(relay: Relay, pod: PodListeners, *, cluster_domain: str) -> None:
    """A meshed pod's connection captured to a router Service's VIP: served as the router port
    serves it (absolute-form, CONNECT), and an origin-form request routed by its Host header."""

    async def serve() -> None:
        req = await read_head(relay, host_routed=True)
        if req is None:
            return
        info = pod.runtime.table.pod(PodKey(pod.pod.namespace, pod.pod.name))
        if info is None:
            ANSWERS.answer(relay, 502, f"{pod.pod.namespace}/{pod.pod.name} is not in the table")
            return
        await route_request(relay, req, pod, info, cluster_domain=cluster_domain, host_routed=True)

    await guarded(relay, serve(), "router Service")


async def guarded(relay: Relay, serving: Coroutine[Any, Any, None], what: str) -> None:
    """Run `serving` for the connection; a bug is logged and answered 502, not left hanging."""
    try:
        await serving
    except asyncio.CancelledError:
        relay.abort()
        raise
    except Exception:
        log.exception("%s: serving a connection failed", what)
        ANSWERS.answer(relay, 502, "internal error")
