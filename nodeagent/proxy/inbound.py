"""Inbound connections of a meshed pod: plaintext on 4141, the mTLS tunnel on 4143.

4141 takes clients outside the mesh (redirected by the pod's PREROUTING rule): recorded as
unauthenticated, refused in strict mode (except from the pod's own node, where the kubelet's
probes come from). 4143 terminates the tunnel with the pod's workload certificate, requires a
client certificate chained to the trust anchor, reads the preamble and answers it. Either way
the app is reached from inside the pod's netns, from the client's own address where the pod's
transparent rules allow it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from functools import partial
from typing import TYPE_CHECKING

from nodeagent.observe import peers
from nodeagent.observe.events import Peer
from nodeagent.observe.metrics import TUNNEL_CONNECTIONS, TUNNEL_STREAMS
from nodeagent.protocol import detect
from nodeagent.protocol import preamble as pre
from nodeagent.proxy import admitting, authz_inbound
from nodeagent.proxy.authz_inbound import Inbound, RequestGate
from nodeagent.proxy.l4proxy import CONNECT_TIMEOUT, Relay, original_destination
from nodeagent.proxy.l7relay import ConnectionTap, peer_port
from nodeagent.proxy.mux import MuxSession, MuxStream
from nodeagent.proxy.outbound import CERT_WAIT, NO_TABLE, report_failed, table_known
from nodeagent.proxy.podnetns import inbound_socket, marked_socket, transparent_socket
from nodeagent.proxy.tunnel import accept_tls, read_preamble, reply
from nodemesh import authz, certs, ports
from nodemesh.model import InboundMode, PodInfo, PodKey

if TYPE_CHECKING:
    from nodeagent.proxy.listeners import PodListeners

log = logging.getLogger(__name__)


async def connect_app(relay: Relay, pod: PodListeners, *, client_ip: str, port: int) -> None:
    """The upstream to the pod's app, made in its netns as `client_ip` when possible."""
    rt = pod.runtime
    loop = asyncio.get_running_loop()
    sock = None
    if rt.transparent:
        sock = pod.stock("transparent", partial(transparent_socket, pod.netns)).take()
        if sock is not None:
            try:
                sock.bind((client_ip, 0))
            except OSError as exc:
                log.debug("no transparent socket in %s: %s", pod.pod.netns, exc)
                sock.close()
                sock = None
    if sock is None and rt.transparent:
        try:
            make = partial(inbound_socket, pod.netns, client_ip=client_ip)
            sock = await loop.run_in_executor(rt.executor, make)
        except OSError as exc:
            log.debug("no transparent socket in %s: %s", pod.pod.netns, exc)
    if sock is None:
        make = partial(marked_socket, pod.netns, mark=rt.mark)
        sock = await loop.run_in_executor(rt.executor, make)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (pod.pod.ip, port)), CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    await relay.open_upstream(sock)


def _tap(
    pod: PodListeners,
    info: PodInfo | None,
    *,
    conn_id: int,
    src: Peer,
    dst: Peer,
    port: int,
    src_port: int,
    tls: bool,
    skip_detection: bool = False,
    parse: bool = True,
) -> ConnectionTap:
    rt = pod.runtime
    return ConnectionTap(
        sink=rt.sink,
        conn_id=conn_id,
        direction="inbound",
        src=src,
        dst=dst,
        tls=tls,
        dst_key=(pod.pod.ip, port),
        src_port=src_port,
        dst_port=port,
        opaque_ports=info.mesh.opaque_ports if info is not None else frozenset(),
        skip_detection=skip_detection,
        parse=parse,
        memory=rt.server_first,
        call_later=asyncio.get_running_loop().call_later,
        detect_timeout=rt.detect_timeout,
    )


async def _authorize(
    relay: Relay, pod: PodListeners, conn: Inbound, *, opaque: bool, replied: bool = True
) -> tuple[bool, RequestGate | None]:
    """Apply the pod's authorization policy before the app is connected: (go on, the gate
    for per-request decisions). A denied client has been answered and the relay finished;
    `replied` is False when a tunnel client still awaits its reply (refused with it when the
    connection is opaque, so its own agent resets the app's connection)."""
    rt = pod.runtime
    decision, _ = authz_inbound.decide(rt.table.authz, conn)
    if decision.verdict is authz.Verdict.ALLOW:
        return True, None
    record = rt.sink.authz_denied
    if not replied:
        if opaque and decision.verdict is authz.Verdict.DENY:
            authz_inbound.record_tcp(record, conn, decision)
            reply(relay, pre.ReplyCode.POLICY_DENIED)
            relay.decline(f"authz: {decision.reason}")
            return False, None
        reply(relay, pre.ReplyCode.ACCEPTED)  # HTTP clients are answered by us, per request
    if decision.verdict is authz.Verdict.PER_REQUEST and not opaque:
        protocol = await authz_inbound.sniff(relay)
        if protocol in (detect.Protocol.HTTP1, detect.Protocol.HTTP2):
            h2 = protocol is detect.Protocol.HTTP2
            return True, RequestGate(rt.table.authz, conn, record, h2=h2)
        decision = authz.Decision(
            authz.Verdict.DENY, decision.policy, "only HTTP requests can be allowed (L7 rules)"
        )
    await authz_inbound.serve_denied(relay, conn, decision, record, opaque=opaque)
    report_failed(
        rt.sink,
        conn_id=conn.conn_id,
        direction="inbound",
        src=conn.src,
        dst=conn.dst,
        tls=conn.tls,
        error=f"authz: {decision.reason}",
    )
    return False, None


def _this_pod(pod: PodListeners) -> tuple[PodInfo | None, Peer]:
    info = pod.runtime.table.pod(PodKey(pod.pod.namespace, pod.pod.name))
    return info, peers.of_pod(info, ip=pod.pod.ip, namespace=pod.pod.namespace, name=pod.pod.name)


async def handle_plain(relay: Relay, pod: PodListeners) -> None:
    rt = pod.runtime
    sock = relay.downstream_socket
    _, port = original_destination(sock)
    if port in ports.IN_POD:
        relay.refuse("connection back to an agent port")
        return
    client_ip = sock.getpeername()[0]
    # Without a table this pod's mode is unknown: a strict pod must not take plaintext.
    known = rt.table.synced or await table_known(relay, pod)
    info, dst = _this_pod(pod)
    src = peers.of_client(rt.routes, client_ip)
    conn_id = next(rt.conn_ids)
    strict = info is not None and info.mesh.inbound_mode is InboundMode.STRICT
    error = ""
    gate = None
    if not known:
        error = NO_TABLE
    elif strict and client_ip not in (info.host_ip if info else "", pod.pod.ip):
        error = "strict inbound mode refuses unauthenticated clients"
    else:
        conn = Inbound(
            pod=PodKey(pod.pod.namespace, pod.pod.name),
            port=port,
            identity="",
            client_ip=client_ip,
            src=src,
            dst=dst,
            tls=False,
            conn_id=conn_id,
            src_port=peer_port(sock),
        )
        opaque = info is not None and port in info.mesh.opaque_ports
        go_on, gate = await _authorize(relay, pod, conn, opaque=opaque)
        if not go_on:
            return
        try:
            await connect_app(relay, pod, client_ip=client_ip, port=port)
        except (OSError, TimeoutError) as exc:
            error = f"app port {port}: {admitting.error_text(exc)}"
            relay.stats.failures.inc()
    if error:
        report_failed(
            rt.sink, conn_id=conn_id, direction="inbound", src=src, dst=dst, tls=False, error=error
        )
        relay.refuse(error)
        return
    relay.start(
        _tap(
            pod,
            info,
            conn_id=conn_id,
            src=src,
            dst=dst,
            port=port,
            src_port=peer_port(sock),
            tls=False,
        ),
        gate=gate,
    )


def _serve_mux(relay: Relay, pod: PodListeners, client_id: str) -> None:
    """The tunnel connection carries many app connections (HTTP/2 CONNECT streams, each one
    admitted as a tunnel connection of its own would be, as `client_id`)."""
    rt = pod.runtime
    transport, early = relay.detach_down()

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        async def handler(r: Relay, p: PodListeners) -> None:
            await handle_tunnel(r, p, carried=(client_id, target))

        TUNNEL_STREAMS.labels("server").inc()
        r = Relay(pod.inbound, rt.relays, lambda r: pod.serve(handler, r))
        stream.protocol = r.down
        r.down.connection_made(stream)  # type: ignore[arg-type]

    def on_lost(session: MuxSession) -> None:
        rt.mux_sessions.discard(session)
        TUNNEL_CONNECTIONS.labels("server").dec()

    session = MuxSession(client_side=False, on_stream=on_stream, on_lost=on_lost)
    rt.mux_sessions.add(session)
    TUNNEL_CONNECTIONS.labels("server").inc()
    transport.set_protocol(session)
    session.start(transport, early)
    if rt.draining:
        session.go_away()


async def handle_tunnel(
    relay: Relay, pod: PodListeners, *, carried: tuple[str, tuple[str, int]] | None = None
) -> None:
    """The shell of `admitting.TunnelAdmission`: it decides, this does the I/O it asks for.
    `carried`: the relay is a stream of a shared tunnel connection whose client proved that
    identity, opened for that target (IP, port)."""
    rt = pod.runtime
    known = rt.table.synced or await table_known(relay, pod)
    info, dst = _this_pod(pod)  # after the wait: a table that just came knows this pod
    plan = admitting.TunnelAdmission(
        pod_ip=pod.pod.ip,
        identity=info.identity if info is not None else "",
        strict=info is not None and info.mesh.inbound_mode is InboundMode.STRICT,
        opaque_ports=info.mesh.opaque_ports if info is not None else frozenset(),
        tls=rt.certs is not None,
    )
    start = plan.start(table_known=known)
    if isinstance(start, admitting.Refuse):
        relay.refuse(start.error)
        return
    client_ip = relay.downstream_socket.getpeername()[0]
    try:
        if carried is not None:
            client_id, header = carried[0], await read_preamble(relay)
            if (str(header.original_ip), header.target_port) != carried[1]:
                raise pre.PreambleError(f"preamble names another target than {carried[1]}")
        elif isinstance(start, admitting.WaitCert):
            assert rt.certs is not None
            held = await rt.certs.wait(start.identity, CERT_WAIT)
            if held is None:
                relay.refuse(plan.no_certificate().error)
                return
            client_id, muxed = await accept_tls(relay, held=held)
            if muxed:
                _serve_mux(relay, pod, client_id)
                return
            header = await read_preamble(relay)
        else:
            client_id, header = "", await read_preamble(relay)
    except (OSError, TimeoutError, ssl.SSLError, certs.PeerRejected, pre.PreambleError) as exc:
        log.debug("tunnel into %s/%s refused: %s", pod.pod.namespace, pod.pod.name, exc)
        relay.refuse(plan.tunnel_failed(exc).error)
        return
    src = peers.of_client(
        rt.routes,
        client_ip,
        identity=client_id,
        namespace=header.source_namespace,
        pod=header.source_pod,
    )
    conn_id = next(rt.conn_ids)
    gate = None
    step = plan.preamble(header, client_id=client_id)
    if isinstance(step, admitting.Authorize):
        conn = Inbound(
            pod=PodKey(pod.pod.namespace, pod.pod.name),
            port=step.port,
            identity=client_id,
            client_ip=client_ip,
            src=src,
            dst=dst,
            tls=plan.tls,
            conn_id=conn_id,
            src_port=peer_port(relay.downstream_socket),
        )
        go_on, gate = await _authorize(relay, pod, conn, opaque=step.opaque, replied=step.replied)
        if not go_on:
            return
        connect = plan.authorized(gate=gate is not None)
        try:
            await connect_app(relay, pod, client_ip=client_ip, port=connect.port)
        except (OSError, TimeoutError) as exc:
            relay.stats.failures.inc()
            step = plan.connect_failed(exc)
        else:
            step = plan.connected()
    if step.reply:
        reply(relay, step.code, step.reply_flags)
    if not step.accepted:
        report_failed(
            rt.sink,
            conn_id=conn_id,
            direction="inbound",
            src=src,
            dst=dst,
            tls=plan.tls,
            error=step.error,
        )
        relay.decline(step.error)
        return
    tap = _tap(
        pod,
        info,
        conn_id=conn_id,
        src=src,
        dst=dst,
        port=header.target_port,
        src_port=peer_port(relay.downstream_socket),
        tls=plan.tls,
        skip_detection=step.skip_detection,
        parse=not step.observed_at_source,
    )
    relay.start(tap, gate=gate)
