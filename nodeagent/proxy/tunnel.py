"""The mesh tunnel between agents: TLS 1.3 with workload certificates, then the preamble.

Source side (`open_tunnel`): on a socket already connected from the source pod's netns to
dstPodIP:4143, handshake as the source workload (offering the last session ticket for that
destination identity), check the server proved the destination's SPIFFE ID, send the preamble
and wait for the reply. Destination side (`accept_tunnel`): handshake as the pod's workload,
requiring a client certificate that chains to the trust anchor, then read the preamble.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

from nodeagent.observe.metrics import TUNNEL_HANDSHAKES
from nodeagent.protocol import mux
from nodeagent.protocol import preamble as pre
from nodeagent.protocol.detect import Protocol
from nodeagent.proxy.l4proxy import Relay
from nodeagent.proxy.routing import Target
from nodeagent.upstream.certstore import Held, server_name
from nodemesh import certs

HANDSHAKE_TIMEOUT = 5.0
PREAMBLE_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0


class TunnelRefused(ConnectionError):
    """The destination agent (or its app) would not take the connection; try another endpoint."""


class TunnelDenied(TunnelRefused):
    """The destination's policy refused the source: another endpoint would say the same."""


class PeerSilent(TunnelRefused):
    """Nothing at all came from the destination agent in time (a node gone without a word):
    another endpoint may answer."""


async def open_tunnel(
    relay: Relay,
    sock: socket.socket,
    *,
    held: Held,
    target: Target,
    source_namespace: str,
    source_pod: str,
    opaque: bool = False,
    observe: bool = False,
    resume: bool = True,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> bool:
    """Make `sock` the relay's TLS upstream to `target`'s agent; True when TLS resumed.
    `observe`: see `exchange`."""
    name = server_name(target.identity)
    session = held.sessions.get(name) if resume else None
    transport = await relay.open_upstream(
        sock,
        context=held.client,
        server_hostname=name,
        session=session,
        handshake_timeout=timeout,
    )
    ssl_object = transport.get_extra_info("ssl_object")
    try:
        certs.check_peer(ssl_object, expected=target.identity)
    except certs.PeerRejected as exc:
        held.sessions.forget(name)
        raise TunnelRefused(str(exc)) from exc
    try:
        await exchange(
            relay,
            target=target,
            source_namespace=source_namespace,
            source_pod=source_pod,
            opaque=opaque,
            observe=observe,
        )
    finally:
        reused = bool(ssl_object.session_reused)
        if resume and held.sessions.wants(name, resumed=reused):
            # By now the server's tickets have been read along with the reply.
            held.sessions.put(name, ssl_object.session)
    return reused


async def exchange(
    relay: Relay,
    *,
    target: Target,
    source_namespace: str,
    source_pod: str,
    opaque: bool = False,
    observe: bool = False,
    timeout: float = REPLY_TIMEOUT,
    silent: tuple[float, Callable[[], bool]] | None = None,
) -> None:
    """Send the preamble on the relay's upstream (a tunnel connection of its own, or a stream of
    a shared one) and wait for the destination agent's reply: TunnelRefused (TunnelDenied for
    its policy) unless it accepted. `silent` = (seconds, heard): PeerSilent when no reply came
    in that long and `heard()` says nothing else came from the destination agent either (an
    agent that is alive answers a stream at once, before its reply).

    `observe`: this agent will observe the connection's HTTP requests and can report them for
    the destination too (observe once); `relay.observes_for_peer` says whether the destination
    agreed to leave them to us (it then parses none of them)."""
    assert relay.up is not None and relay.up.transport is not None
    flags = pre.PreambleFlags.WANT_REPLY
    if opaque:
        flags |= pre.PreambleFlags.SKIP_DETECTION
    elif observe:
        flags |= pre.PreambleFlags.SOURCE_OBSERVES
    preamble = pre.encode_preamble(
        pre.Preamble(
            target_port=target.port,
            original_ip=ipaddress.ip_address(target.ip),
            protocol=Protocol.OPAQUE if opaque else None,
            source_namespace=source_namespace,
            source_pod=source_pod,
            flags=flags,
        )
    )
    # The client's first bytes go with it (one write, one frame) rather than a round trip later:
    # the destination agent holds them until it has admitted the connection and reached the
    # app, and drops them if it refuses; another endpoint tried next gets them again.
    relay.up.transport.write(preamble + relay.take_ahead())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got = False
    if silent is not None and silent[0] < timeout:
        got = await relay.wait_for_bytes(pre.REPLY_SIZE, silent[0], upstream=True)
        up = relay.up
        if not got and up is not None and not (up.eof or up.lost) and not silent[1]():
            raise PeerSilent(f"the destination agent sent nothing in {silent[0]:g} s")
    if not got and not await relay.wait_for_bytes(
        pre.REPLY_SIZE, max(deadline - loop.time(), 0.0), upstream=True
    ):
        raise TunnelRefused("the destination agent closed the tunnel without a reply")
    try:
        reply = pre.decode_reply(relay.consume(pre.REPLY_SIZE, upstream=True))
    except pre.PreambleError as exc:
        raise TunnelRefused(f"bad tunnel reply: {exc}") from exc
    if reply.code == pre.ReplyCode.POLICY_DENIED:
        raise TunnelDenied(f"destination refused: {reply.reason}")
    if not reply.accepted:
        raise TunnelRefused(f"destination refused: {reply.reason}")
    relay.observes_for_peer = (
        observe and not opaque and bool(reply.flags & pre.ReplyFlags.OBSERVED_AT_SOURCE)
    )


async def read_preamble(relay: Relay, timeout: float = PREAMBLE_TIMEOUT) -> pre.Preamble:
    """The preamble at the start of the client's bytes (consumed; the rest is the app's)."""
    if not await relay.wait_for_bytes(pre.HEADER_SIZE, timeout):
        raise pre.PreambleError("no preamble before the timeout")
    size = pre.preamble_size(bytes(relay.early[: pre.HEADER_SIZE]))
    if not await relay.wait_for_bytes(size, timeout):
        raise pre.PreambleError("preamble cut short")
    header, used = pre.decode_preamble(bytes(relay.early))
    relay.consume(used)
    return header


async def accept_tls(
    relay: Relay, *, held: Held, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[str, bool]:
    """Terminate TLS as `held`'s workload: the client's proven identity, and whether it agreed
    on multiplexing (nodeagent.protocol.mux: streams follow, not one preamble)."""
    await relay.start_tls_down(held.server, timeout=timeout)
    assert relay.down.transport is not None
    ssl_object = relay.down.transport.get_extra_info("ssl_object")
    identity = certs.peer_identity(ssl_object)
    TUNNEL_HANDSHAKES.labels("server", "resumed" if ssl_object.session_reused else "full").inc()
    return identity, ssl_object.selected_alpn_protocol() == mux.ALPN


async def accept_tunnel(
    relay: Relay, *, held: Held, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[str, pre.Preamble]:
    """Terminate TLS as `held`'s workload; returns the client's proven identity and preamble."""
    identity, _ = await accept_tls(relay, held=held, timeout=timeout)
    return identity, await read_preamble(relay)


def reply(relay: Relay, code: pre.ReplyCode, flags: pre.ReplyFlags = pre.ReplyFlags.NONE) -> None:
    if relay.down.transport is not None and not relay.down.lost:
        relay.down.transport.write(pre.encode_reply(code, flags))
