"""Inbound authorization at the destination's agent: the decision for a new connection, and
the agent's own answers to a client the policy denies (the app is never connected).

`decide` asks the table's compiled policies (nodemesh.authz) about (pod, port, client identity,
client address). A denied client of an opaque port, or one that speaks neither HTTP/1 nor
HTTP/2, is reset; an HTTP client gets its answers from nodeagent.protocol.authz_deny for as long
as it keeps the connection, each denial counted and tapped through the sink. A client that only
L7 rules can allow is let through with an HTTP/1 gate (nodeagent.protocol.authz_gate) that
decides each request; on HTTP/2 such a client is denied whole (per-stream gating is not done).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodeagent.observe.events import AuthzDenied, Peer
from nodeagent.protocol import detect
from nodeagent.protocol.authz_deny import (
    GRPC_PERMISSION_DENIED,
    DeniedRequest,
    DenyError,
    H2DenyAll,
    Http1DenyAll,
)
from nodeagent.protocol.authz_gate import GateError, Http1Gate
from nodeagent.protocol.authz_h2gate import H2GateError, Http2Gate
from nodeagent.proxy.l4proxy import Relay
from nodemesh import authz
from nodemesh.model import PodKey

log = logging.getLogger(__name__)

SNIFF_TIMEOUT = 3.0  # a denied client that says nothing HTTP-like by then is reset
IDLE_TIMEOUT = 30.0  # a denied HTTP client that goes quiet this long is closed


@dataclass(slots=True)
class Inbound:
    """What is known of an inbound connection when it is decided."""

    pod: PodKey
    port: int
    identity: str  # the client's proven SPIFFE ID ("" when not mTLS)
    client_ip: str
    src: Peer
    dst: Peer
    tls: bool
    conn_id: int
    src_port: int = 0


def decide(policies: authz.PolicyTable, conn: Inbound) -> tuple[authz.Decision, list[authz.Policy]]:
    applying = policies.applying(conn.pod, conn.port)
    decision = authz.decide_connection(applying, identity=conn.identity, ip=conn.client_ip)
    return decision, applying


Record = Callable[[AuthzDenied], None]


def _event(conn: Inbound, decision: authz.Decision, protocol: str) -> AuthzDenied:
    return AuthzDenied(
        conn_id=conn.conn_id,
        direction="inbound",
        src=conn.src,
        dst=conn.dst,
        tls=conn.tls,
        policy=decision.policy,
        reason=decision.reason,
        protocol=protocol,
        at=time.time(),
        src_port=conn.src_port,
        dst_port=conn.port,
    )


def record_tcp(record: Record, conn: Inbound, decision: authz.Decision) -> None:
    record(_event(conn, decision, "tcp"))


def record_request(
    record: Record, conn: Inbound, decision: authz.Decision, req: DeniedRequest, *, h2: bool
) -> None:
    ev = _event(conn, decision, "grpc" if req.grpc else ("http2" if h2 else "http1"))
    ev.method, ev.path = req.method, req.path
    ev.status = 200 if req.grpc else 403
    ev.grpc_status = GRPC_PERMISSION_DENIED if req.grpc else None
    record(ev)


class RequestGate:
    """The relay's gate for a client only L7 rules can allow: HTTP/1 or HTTP/2 requests
    decided one by one (nodemesh.authz.decide_request) against the policies in force when
    each request comes (the agent's live table), denials recorded."""

    def __init__(
        self, policies: authz.PolicyTable, conn: Inbound, record: Record, *, h2: bool
    ) -> None:
        self.policies, self.conn, self.record, self.h2 = policies, conn, record, h2
        self.last = authz.Decision(authz.Verdict.DENY)
        self.http1 = None if h2 else Http1Gate(self._decide)
        self.http2 = Http2Gate(self._decide) if h2 else None

    def _decide(self, method: str, path: str) -> tuple[bool, str]:
        d = authz.decide_request(
            self.policies.applying(self.conn.pod, self.conn.port),
            identity=self.conn.identity,
            ip=self.conn.client_ip,
            method=method, path=path,
        )  # fmt: skip
        if not d.allowed:
            self.last = d
        return d.allowed, d.reason

    def _denied(self, denied: list[DeniedRequest]) -> None:
        for req in denied:
            record_request(self.record, self.conn, self.last, req, h2=self.h2)

    def client(self, data: bytes) -> tuple[bytes, bytes, bool]:
        try:
            if self.http2 is not None:
                out2 = self.http2.client(data)
                self._denied(out2.denied)
                return out2.to_app, out2.to_client, False
            assert self.http1 is not None
            out = self.http1.client(data)
        except (GateError, H2GateError) as exc:
            log.debug("closing a gated connection into %s: %s", self.conn.pod, exc)
            return b"", b"", True
        self._denied(out.denied)
        return out.forward, out.reply, out.close

    def server(self, data: bytes) -> tuple[bytes, bool]:
        if self.http2 is not None:
            return self.http2.server(data), False
        assert self.http1 is not None
        out = self.http1.server(data)
        return data + out.reply, out.close


async def sniff(relay: Relay, timeout: float = SNIFF_TIMEOUT) -> detect.Protocol | None:
    """The protocol of the client's first bytes (left in relay.early), None if undecided."""
    while True:
        found = detect.sniff(bytes(relay.early))
        if found.protocol is not None:
            return found.protocol
        if len(relay.early) >= detect.MAX_PEEK:
            return None
        if not await relay.wait_for_bytes(len(relay.early) + 1, timeout):
            return None


async def serve_denied(
    relay: Relay,
    conn: Inbound,
    decision: authz.Decision,
    record: Record,
    *,
    opaque: bool,
) -> None:
    """Answer a denied client without the app, then close; the relay is finished after."""
    reason = f"denied by {decision.policy}: {decision.reason}" if decision.policy else "denied"
    protocol = None if opaque else await sniff(relay)
    if protocol not in (detect.Protocol.HTTP1, detect.Protocol.HTTP2):
        record_tcp(record, conn, decision)
        relay.refuse(reason)
        return
    h2 = protocol is detect.Protocol.HTTP2
    responder: Http1DenyAll | H2DenyAll = (
        H2DenyAll(decision.reason) if h2 else Http1DenyAll(decision.reason)
    )
    try:
        while True:
            data = relay.consume(len(relay.early))
            out = responder.feed(data)
            for req in responder.take_denied():
                record_request(record, conn, decision, req, h2=h2)
            transport = relay.down.transport
            if out and transport is not None and not relay.down.lost:
                transport.write(out)
            if responder.done:
                break
            if not await relay.wait_for_bytes(1, IDLE_TIMEOUT):
                break
    except DenyError as exc:
        log.debug("denied client of %s: %s", conn.pod, exc)
    relay.decline(reason)
