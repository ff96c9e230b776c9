"""Tap subscriptions on the agent: which requests match, how many per second, which events
go out (sans-io: the gRPC shell in nodeagent.upstream.tap feeds commands and ships `emit`'s output).

A subscription names this node's pods of its resource; their outbound requests (the pod is the
source) and inbound requests (the pod is the destination, only when no `to` is given, as
`linkerd tap deploy/x` shows both sides) match, narrowed by `to_addresses` (destination IPs),
method and path prefix. Each subscription admits at most `max_rps` requests a second (token
bucket, burst max(1, rate)); an admitted request's response and end follow it whatever the rate.
With no subscription, `tapping()` is one truth test.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from nodeagent.observe.events import AuthzDenied, Peer, RequestObserved, RequestStarted
from nodemesh.api import tap_pb2 as pb
from nodemesh.ratelimit import TokenBucket

MAX_ADMITTED = 10_000  # requests between req and end; the oldest are forgotten past this
DIRECTIONS = {"inbound": pb.INBOUND, "outbound": pb.OUTBOUND}
PROTOCOL_NAMES = {"http1": "HTTP/1.1", "http2": "HTTP/2", "grpc": "gRPC"}


@dataclass
class Subscription:
    id: str
    pods: frozenset[tuple[str, str]]
    to_addresses: frozenset[str]
    method: str
    path_prefix: str
    bucket: TokenBucket

    def pair(self, src: Peer, dst: Peer) -> bool:
        if self.to_addresses and dst.ip not in self.to_addresses:
            return False
        return (src.namespace, src.pod) in self.pods or (
            not self.to_addresses and (dst.namespace, dst.pod) in self.pods
        )

    def request(self, direction: str, src: Peer, dst: Peer, method: str, path: str) -> bool:
        if self.method and method.upper() != self.method.upper():
            return False
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if direction == "outbound":
            tapped = (src.namespace, src.pod) in self.pods
        else:
            tapped = not self.to_addresses and (dst.namespace, dst.pod) in self.pods
        return tapped and (not self.to_addresses or dst.ip in self.to_addresses)


@dataclass
class _Admitted:
    started: float  # time.time() of the request's start, as the data plane saw it
    direction: int
    src: pb.TapPeer
    dst: pb.TapPeer
    tls: bool
    subscriptions: list[str] = field(default_factory=list)


def tap_peer(peer: Peer, port: int = 0) -> pb.TapPeer:
    return pb.TapPeer(
        ip=peer.ip,
        port=port,
        namespace=peer.namespace,
        pod=peer.pod,
        workload_kind=peer.workload_kind.lower(),
        workload=peer.workload,
        service=peer.service,
        identity=peer.identity,
    )


class Taps:
    """The node's active taps; `emit(event)` receives the TapEvents to send."""

    def __init__(
        self,
        *,
        node: str,
        emit: Callable[[pb.TapEvent], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.emit = emit
        self.clock = clock
        self.subscriptions: dict[str, Subscription] = {}
        self._admitted: OrderedDict[int, _Admitted] = OrderedDict()
        self.rate_limited = 0

    # --- commands from the control plane --------------------------------------------------

    def start(self, sub: pb.TapSubscription) -> None:
        """A new tap, or new pods for an existing one (its rate bucket is kept)."""
        old = self.subscriptions.get(sub.id)
        bucket = old.bucket if old is not None else TokenBucket(sub.max_rps, clock=self.clock)
        if old is not None and bucket.rate != sub.max_rps:
            bucket = TokenBucket(sub.max_rps, clock=self.clock)
        self.subscriptions[sub.id] = Subscription(
            id=sub.id,
            pods=frozenset((p.namespace, p.name) for p in sub.pods),
            to_addresses=frozenset(sub.to_addresses),
            method=sub.method,
            path_prefix=sub.path_prefix,
            bucket=bucket,
        )

    def stop(self, sub_id: str) -> None:
        self.subscriptions.pop(sub_id, None)
        if not self.subscriptions:
            self._admitted.clear()

    def clear(self) -> None:
        """The control plane is gone: its taps are gone with it."""
        self.subscriptions.clear()
        self._admitted.clear()

    # --- from the sink --------------------------------------------------------------------

    def tapping(self, src: Peer, dst: Peer) -> bool:
        if not self.subscriptions:
            return False
        return any(s.pair(src, dst) for s in self.subscriptions.values())

    def request_started(self, started: RequestStarted) -> None:
        chosen = []
        for s in self.subscriptions.values():
            if s.request(started.direction, started.src, started.dst, started.method, started.path):
                if s.bucket.admit():
                    chosen.append(s.id)
                else:
                    self.rate_limited += 1
        if not chosen:
            return
        admitted = _Admitted(
            started.at,
            DIRECTIONS.get(started.direction, 0),
            tap_peer(started.src, started.src_port),
            tap_peer(started.dst, started.dst_port),
            started.tls,
            chosen,
        )
        self._admitted[started.req_id] = admitted
        if len(self._admitted) > MAX_ADMITTED:
            self._admitted.popitem(last=False)
        init = pb.RequestInit(
            method=started.method,
            scheme="http",
            authority=started.authority,
            path=started.path,
            protocol=PROTOCOL_NAMES.get(started.protocol, started.protocol),
            route=started.route,
        )
        for sub_id in chosen:
            ev = self._event(sub_id, started.req_id, admitted, started.at)
            ev.req.CopyFrom(init)
            self.emit(ev)

    def response_started(self, req_id: int, status: int | None, at: float) -> None:
        admitted = self._admitted.get(req_id)
        if admitted is None:
            return
        since = round((at - admitted.started) * 1_000_000)
        rsp = pb.ResponseInit(status=status or 0, since_request_us=max(since, 0))
        for sub_id in admitted.subscriptions:
            ev = self._event(sub_id, req_id, admitted, at)
            ev.rsp.CopyFrom(rsp)
            self.emit(ev)

    def request_ended(self, ev: RequestObserved) -> None:
        admitted = self._admitted.pop(ev.req_id, None)
        if admitted is None:
            return
        end = pb.ResponseEnd(
            since_request_us=max(round(ev.latency_s * 1_000_000), 0),
            request_bytes=ev.request_bytes,
            response_bytes=ev.response_bytes,
            error="reset" if ev.reset else ("" if ev.status else "no response"),
        )
        if ev.grpc_status is not None:
            end.grpc_status = ev.grpc_status
        for sub_id in admitted.subscriptions:
            if sub_id not in self.subscriptions:
                continue
            out = self._event(sub_id, ev.req_id, admitted, ev.started_at + ev.latency_s)
            out.end.CopyFrom(end)
            self.emit(out)

    def denied(self, req_id: int, ev: AuthzDenied) -> None:
        """A request the destination's policy denied: req, rsp and end at once, the end's error
        naming the policy and the reason."""
        self.request_started(
            RequestStarted(
                req_id=req_id,
                conn_id=ev.conn_id,
                direction=ev.direction,
                src=ev.src,
                dst=ev.dst,
                protocol=ev.protocol,
                tls=ev.tls,
                method=ev.method,
                authority=ev.authority,
                path=ev.path,
                at=ev.at,
                src_port=ev.src_port,
                dst_port=ev.dst_port,
            )
        )
        self.response_started(req_id, ev.status, ev.at)
        admitted = self._admitted.pop(req_id, None)
        if admitted is None:
            return
        end = pb.ResponseEnd(error=f"denied by {ev.policy}: {ev.reason}")
        if ev.grpc_status is not None:
            end.grpc_status = ev.grpc_status
        for sub_id in admitted.subscriptions:
            out = self._event(sub_id, req_id, admitted, ev.at)
            out.end.CopyFrom(end)
            self.emit(out)

    def _event(self, sub_id: str, req_id: int, a: _Admitted, at: float) -> pb.TapEvent:
        ev = pb.TapEvent(
            subscription_id=sub_id,
            request_id=req_id,
            node=self.node,
            direction=a.direction,  # type: ignore[arg-type]
            tls=a.tls,
            timestamp_ms=int(at * 1000),
        )
        ev.src.CopyFrom(a.src)
        ev.dst.CopyFrom(a.dst)
        return ev
