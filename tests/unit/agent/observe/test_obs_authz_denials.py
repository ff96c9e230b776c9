"""Denials counted by the destination's agent: Linkerd's inbound_http_authz_deny_total and
inbound_tcp_authz_deny_total with the policy as `authz`, and report series the control plane's
stat counts (requests with authz_deny, connections in authz_denied), each reported once."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from nodeagent.observe.events import AuthzDenied, Peer
from nodeagent.observe.stats.denials import Denials
from nodemesh.api import telemetry_pb2 as pb

BOT = Peer(
    "10.244.1.7", "emojivoto", "vote-bot-1", "Deployment", "vote-bot",
    identity="spiffe://cluster.local/ns/emojivoto/sa/vote-bot",
)  # fmt: skip
EMOJI = Peer("10.244.2.9", "emojivoto", "emoji-1", "Deployment", "emoji")


def denied(protocol: str, *, src: Peer = BOT, policy: str = "emojivoto/emoji-grpc") -> AuthzDenied:
    grpc = protocol == "grpc"
    return AuthzDenied(
        conn_id=1, direction="inbound", src=src, dst=EMOJI, tls=True, policy=policy,
        reason="not allowed", protocol=protocol, at=time.time(), method="POST",
        path="/emojivoto.v1.EmojiService/ListAll", status=200 if grpc else 403,
        grpc_status=7 if grpc else None,
    )  # fmt: skip


class _Wrap(Collector):
    def __init__(self, d: Denials) -> None:
        self.d = d

    def collect(self):  # type: ignore[no-untyped-def]
        return self.d.collect()


def test_denials_are_counted_per_policy_with_linkerd_names() -> None:
    d = Denials()
    for _ in range(3):
        d.add(denied("grpc"))
    # Another client pod of the same deployment: the same series (peers are kept without IP).
    other = Peer(
        "10.244.1.8", BOT.namespace, BOT.pod, BOT.workload_kind, BOT.workload, "", BOT.identity
    )
    d.add(denied("grpc", src=other))
    d.add(denied("tcp", policy="emojivoto/voting"))
    reg = CollectorRegistry()
    reg.register(_Wrap(d))
    text = generate_latest(reg).decode()
    http = [line for line in text.splitlines() if line.startswith("inbound_http_authz_deny_total")]
    (line,) = http
    assert 'authz="emojivoto/emoji-grpc"' in line and 'protocol="grpc"' in line
    assert 'client_id="spiffe://cluster.local/ns/emojivoto/sa/vote-bot"' in line
    assert 'deployment="emoji"' in line and line.endswith(" 4.0")
    (tcp,) = [line for line in text.splitlines() if line.startswith("inbound_tcp_authz_deny_total")]
    assert 'authz="emojivoto/voting"' in tcp and tcp.endswith(" 1.0")


def test_report_series_carry_each_denial_once() -> None:
    d = Denials()
    d.add(denied("grpc"))
    d.add(denied("grpc"))
    d.add(denied("http1"))
    d.add(denied("tcp"))
    requests, tcp = d.drain()
    by_status = {(s.protocol, s.status_code, s.grpc_status): s for s in requests}
    grpc = by_status[(pb.GRPC, 200, 7)]
    assert grpc.responses == 2 and grpc.authz_deny == "emojivoto/emoji-grpc"
    assert grpc.classification == pb.FAILURE and grpc.src.deployment == "vote-bot"
    http = by_status[(pb.HTTP1, 403, 0)]
    assert http.responses == 1 and http.classification == pb.SUCCESS
    (t,) = tcp
    assert t.authz_denied == 1 and t.dst.deployment == "emoji"
    assert d.drain() == ([], [])  # nothing new: nothing reported twice


def test_the_table_is_bounded() -> None:
    d = Denials(max_keys=2)
    for i in range(5):
        d.add(denied("http1", policy=f"ns/p{i}"))
    assert len(d.table) == 2 and d.dropped == 3


def test_a_tapped_denial_shows_the_policy_and_the_reason_and_counts() -> None:
    from nodeagent.observe.sink import AgentSink
    from nodemesh.api import tap_pb2

    sink = AgentSink(node="node1")
    events: list[tap_pb2.TapEvent] = []
    sink.taps.emit = events.append
    sink.taps.start(
        tap_pb2.TapSubscription(
            id="t1",
            resource=tap_pb2.ResourceRef(kind="deployment", namespace="emojivoto", name="emoji"),
            pods=[tap_pb2.PodRef(namespace="emojivoto", name="emoji-1")],
            max_rps=100.0,
        )
    )
    sink.authz_denied(denied("grpc"))
    sink.authz_denied(denied("tcp"))  # a refused connection is no request: counted, not tapped
    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds == ["req", "rsp", "end"]
    assert events[0].req.path == "/emojivoto.v1.EmojiService/ListAll"
    assert events[2].end.error == "denied by emojivoto/emoji-grpc: not allowed"
    assert events[2].end.grpc_status == 7
    assert sum(c[0] for c in sink.aggregate.denials.table.values()) == 2
