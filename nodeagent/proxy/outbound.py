"""Outbound connections of a meshed pod (its 4140 listener): route, balance, connect, observe.

The original destination is looked up in the table (nodeagent.proxy.routing). A Service VIP's ready
endpoints are chosen by the balancer; an endpoint that refuses, times out or whose agent turns
the tunnel down is marked down and the next one is tried, so the app only sees an error when
every attempt failed. Meshed endpoints get the mTLS tunnel to their agent (port 4143), others a
plain connection; either way the socket is made inside the source pod's netns with the mark.
With no table yet the connection is held, then refused (nodeagent.proxy.failclosed): never
plaintext.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from nodeagent.observe import peers
from nodeagent.observe.events import ObservationSink, Peer, TcpClosed, TcpOpened
from nodeagent.observe.metrics import TUNNEL_HANDSHAKES
from nodeagent.protocol.preamble import PreambleError
from nodeagent.proxy import dialing, failclosed, tunnelpool
from nodeagent.proxy.l4proxy import CONNECT_TIMEOUT, Gate, Relay, original_destination
from nodeagent.proxy.l7 import takeover
from nodeagent.proxy.l7relay import ConnectionTap, peer_port
from nodeagent.proxy.podnetns import marked_socket
from nodeagent.proxy.routing import Route, Target
from nodeagent.proxy.tunnel import HANDSHAKE_TIMEOUT, TunnelDenied, TunnelRefused, open_tunnel
from nodemesh import ports
from nodemesh.model import PodInfo, PodKey

if TYPE_CHECKING:
    from nodeagent.pod import PodAddress
    from nodeagent.proxy.listeners import PodListeners, ProxyRuntime
    from nodemesh.netns import NetnsHandle


class Caller(Protocol):
    """Whose connection is dialled: a meshed pod's listeners, or a router-mode caller."""

    @property
    def pod(self) -> PodAddress: ...
    @property
    def runtime(self) -> ProxyRuntime: ...
    @property
    def netns(self) -> str | NetnsHandle: ...


log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# Per attempt while other endpoints remain: a dead pod's address must not hold the client long.
RETRY_CONNECT_TIMEOUT = 1.0
# The last endpoint's tunnel handshake may wait longer: a destination agent whose container
# restarts leaves its listeners parked (nodeagent.handover.park), so the connection is accepted
# by the kernel and answered once the next agent runs, seconds later.
LAST_HANDSHAKE_TIMEOUT = 15.0
# How long a connection waits for its workload's certificate (a pod that just started).
CERT_WAIT = 5.0
# How long a connection waits for the first table after an agent restart (then it is refused):
# without a table every meshed destination looks unknown and would be reached in plaintext.
SYNC_WAIT = failclosed.HOLD_FOR_TABLE

RETRYABLE = (OSError, TimeoutError, ssl.SSLError, TunnelRefused, PreambleError)
# A pod meshed while it runs (its namespace just labelled) is announced as meshed to every agent
# while its own agent is still opening its tunnel port: a refused tunnel to it is tried again,
# every TUNNEL_RETRY_S, for up to TUNNEL_OPENING_S (meshing a pod in place takes a certificate,
# rules and listeners: seconds on a busy node), rather than failing the app's connection.
TUNNEL_OPENING_S = 5.0
TUNNEL_RETRY_S = 0.1


def report_failed(
    sink: ObservationSink,
    *,
    conn_id: int,
    direction: str,
    src: Peer,
    dst: Peer,
    tls: bool,
    error: str,
) -> None:
    """A connection accepted but never relayed still counts as opened and closed, with why."""
    sink.tcp_opened(TcpOpened(conn_id, direction, src, dst, "tcp", tls, time.time()))
    sink.tcp_closed(TcpClosed(conn_id, direction, src, dst, "tcp", tls, 0, 0, 0.0, error))


async def dial_upstream(
    relay: Relay,
    pod: Caller,
    info: PodInfo | None,
    target: Target,
    *,
    opaque: bool,
    timeout: float,
    handshake: float = HANDSHAKE_TIMEOUT,
    observe: bool = False,
) -> bool:
    """Open the relay's upstream to `target` as `pod` (the mTLS tunnel when meshed, with the
    pod's identity; never plaintext to a meshed pod); True when it is mTLS. The L7 path dials
    its upstream connections with this too (nodeagent.proxy.l7.dial). `observe`: the relay's
    tap will observe the requests; offer the destination agent to report them for it too
    (`relay.observes_for_peer` says whether it took the offer)."""
    rt = pod.runtime
    loop = asyncio.get_running_loop()
    identity = info.identity if info is not None else ""
    how = failclosed.upstream(
        meshed=target.meshed, source_identity=identity, mtls=rt.certs is not None
    )
    if how is failclosed.Upstream.REFUSE:
        raise TunnelDenied(f"{pod.pod.namespace}/{pod.pod.name} has no identity to tunnel with")
    tunnel = how is failclosed.Upstream.TUNNEL
    held = None
    if tunnel:
        assert rt.certs is not None
        held = await rt.certs.wait(identity, CERT_WAIT)
        if held is None:
            raise TunnelDenied(f"no certificate for {identity} yet")
    make = partial(marked_socket, pod.netns, mark=rt.mark)
    addr = (target.ip, ports.TUNNEL if tunnel else target.port)

    async def connect() -> socket.socket:
        sock = await loop.run_in_executor(rt.executor, make)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    pool = rt.tunnel_pool() if held is not None else None
    if pool is not None and held is not None:
        try:
            dialled = await pool.open(
                relay,
                key=tunnelpool.pool_key(
                    netns=pod.pod.netns, source_ip=pod.pod.ip, identity=identity, target=target
                ),
                connect=connect,
                held=held,
                target=target,
                source_namespace=pod.pod.namespace,
                source_pod=pod.pod.name,
                opaque=opaque or target.opaque,
                timeout=handshake,
                answer_within=timeout,
                observe=observe,
            )
        except tunnelpool.NoMux:
            relay.drop_upstream()  # an older destination agent: a tunnel of its own
        else:
            if dialled:
                rt.handshakes["full"] += 1
            return True
    sock = await connect()
    if held is None:
        await relay.open_upstream(sock)
        return False
    assert rt.certs is not None
    resumed = await open_tunnel(
        relay,
        sock,
        held=held,
        target=target,
        source_namespace=pod.pod.namespace,
        source_pod=pod.pod.name,
        opaque=opaque or target.opaque,
        observe=observe,
        resume=rt.certs.resume,
        timeout=handshake,
    )
    rt.handshakes["resumed" if resumed else "full"] += 1
    TUNNEL_HANDSHAKES.labels("client", "resumed" if resumed else "full").inc()
    return True


async def table_known(relay: Relay, pod: PodListeners) -> bool:
    """Hold the connection until the agent has a table; False (refuse it) if none comes."""
    table = pod.runtime.table
    started = time.monotonic()
    while True:
        wait = failclosed.table_wait(
            synced=table.synced,
            held_for=time.monotonic() - started,
            client_gone=relay.down.lost,
            limit=SYNC_WAIT,
        )
        if wait is failclosed.Wait.PROCEED:
            return True
        if wait is failclosed.Wait.REFUSE:
            return False
        await asyncio.sleep(0.05)  # rare (the first seconds of an agent): polling is fine


NO_TABLE = failclosed.NO_TABLE


async def handle(relay: Relay, pod: PodListeners) -> None:
    rt = pod.runtime
    sock = relay.downstream_socket
    ip, port = original_destination(sock)
    if (ip, port) == sock.getsockname()[:2]:
        relay.refuse("reached the outbound listener directly")
        return
    if not rt.table.synced and not await table_known(relay, pod):
        relay.stats.failures.inc()
        src = peers.of_pod(None, ip=pod.pod.ip, namespace=pod.pod.namespace, name=pod.pod.name)
        report_failed(
            rt.sink,
            conn_id=next(rt.conn_ids),
            direction="outbound",
            src=src,
            dst=peers.peer(ip),
            tls=False,
            error=NO_TABLE,
        )
        relay.refuse(NO_TABLE)
        return
    info = rt.table.pod(PodKey(pod.pod.namespace, pod.pod.name))
    src = peers.of_pod(info, ip=pod.pod.ip, namespace=pod.pod.namespace, name=pod.pod.name)
    route = rt.routes.resolve(ip, port)
    if route.service is not None and route.service.router and rt.host_routed is not None:
        await rt.host_routed(relay, pod)  # routed by what its requests name, not by the VIP
        return
    if await takeover.try_take(relay, pod, route, dial=dial_upstream):
        return
    relay.send_ahead = True  # no gate on this path: the first bytes may go with the preamble
    error = await connect_route(relay, pod, route, info=info, src=src)
    if error is not None:
        relay.refuse(error)


def offers_observation(rt: ProxyRuntime, route: Route, *, now: float) -> bool:
    """Offer the destination's agent to observe the connection's requests for it (observe
    once): only when this agent's tap will parse them, so not on an opaque route nor to a
    destination the agent remembers as speaking first (its tap relays those opaque)."""
    return (
        rt.observe_once
        and not route.opaque
        and not rt.server_first.seen(route.ip, route.port, now=now)
    )


async def connect_route(
    relay: Relay,
    pod: Caller,
    route: Route,
    *,
    info: PodInfo | None,
    src: Peer,
    gate: Gate | None = None,
    connected: Callable[[], None] | None = None,
    report: bool = True,
) -> str | None:
    """Dial `route` for `pod` (balancing, retries, the tunnel to meshed endpoints) and start the
    relay: None. When every attempt failed, the failure is counted and returned; the client is
    left for the caller to answer. `connected` runs once the upstream is open, before relaying.
    `report=False`: a failure is returned uncounted (the caller may try again, and counts)."""
    rt = pod.runtime
    conn_id = next(rt.conn_ids)
    plan = dialing.DialPlan(
        targets=route.targets if route.known else (Target(route.ip, route.port),),
        known=route.known,
        balancer=rt.balancer,
        max_attempts=MAX_ATTEMPTS,
        short_timeout=RETRY_CONNECT_TIMEOUT,
        long_timeout=CONNECT_TIMEOUT,
        opening_window=TUNNEL_OPENING_S,
        opening_retry=TUNNEL_RETRY_S,
        no_endpoints=(
            f"{route.service.key} has no ready endpoint"
            if route.service and route.no_endpoints
            else ""
        ),
    )
    while not isinstance(step := plan.next(time.monotonic()), dialing.GiveUp):
        if isinstance(step, dialing.Wait):
            # Nothing else to try: wait for that agent to open its tunnel port.
            await asyncio.sleep(step.seconds)
            if relay.down.lost:
                plan.done = True  # nobody waits for it any more
            continue
        target = step.target
        started = time.monotonic()
        try:
            tls = await dial_upstream(
                relay,
                pod,
                info,
                target,
                opaque=route.opaque,
                timeout=step.timeout,
                handshake=HANDSHAKE_TIMEOUT if step.more else LAST_HANDSHAKE_TIMEOUT,
                observe=offers_observation(rt, route, now=started),
            )
        except TunnelDenied as exc:
            relay.drop_upstream()
            plan.failed(str(exc), now=time.monotonic(), denied=True)
            continue
        except RETRYABLE as exc:
            error = f"{target.ip}:{target.port}: {str(exc) or type(exc).__name__}"
            log.debug("outbound %s/%s -> %s", pod.pod.namespace, pod.pod.name, error)
            relay.drop_upstream()
            plan.failed(
                error,
                now=time.monotonic(),
                client_gone=relay.down.lost,
                tunnel_refused=isinstance(exc, ConnectionRefusedError) and target.meshed,
            )
            continue
        except asyncio.CancelledError:
            relay.drop_upstream()
            relay.abort()
            raise
        if connected is not None:
            connected()
        _start(relay, pod, conn_id, src, route, target, tls, started, gate)
        return None
    target, error = step.last, step.error
    if not report:
        return error
    relay.stats.failures.inc()
    dst = peers.of_target(target, route.service) if target is not None else peers.peer(route.ip)
    report_failed(
        rt.sink, conn_id=conn_id, direction="outbound", src=src, dst=dst, tls=False, error=error
    )
    return error


def _start(
    relay: Relay,
    pod: Caller,
    conn_id: int,
    src: Peer,
    route: Route,
    target: Target,
    tls: bool,
    started: float,
    gate: Gate | None = None,
) -> None:
    rt = pod.runtime
    balancer, key = rt.balancer, target.key
    now = time.monotonic()
    balancer.observe(key, now - started, now=now)
    balancer.opened(key, now=now)
    relay.on_finish(lambda: balancer.closed(key, now=time.monotonic()))
    tap = ConnectionTap(
        sink=rt.sink,
        conn_id=conn_id,
        direction="outbound",
        src=src,
        dst=peers.of_target(target, route.service) if route.known else peers.peer(target.ip),
        tls=tls,
        dst_key=(route.ip, route.port),
        src_port=peer_port(relay.downstream_socket),
        dst_port=target.port,
        skip_detection=route.opaque or target.opaque,
        memory=rt.server_first,
        call_later=asyncio.get_running_loop().call_later,
        detect_timeout=rt.detect_timeout,
        on_first_byte=lambda s: balancer.observe(key, s, now=time.monotonic()),
        for_peer=peers.of_target(target, None) if relay.observes_for_peer else None,
    )
    if route.service is not None:
        rt.pinned.watch(relay, route, target, tap)
    relay.start(tap, gate)
