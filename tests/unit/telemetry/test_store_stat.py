"""Golden metrics from the store equal exact values computed from the same samples."""

import random

import pytest
from agent_reports import EMOJI, VOTING, WEB, ReportBuilder, peer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.telemetry import (
    InvalidQuery,
    Resource,
    TelemetryStore,
    UnknownResourceKind,
    edges,
    nodes,
    stat,
)
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.histogram import RELATIVE_ERROR, nearest_rank

T0 = 1_000_000.0


def exact_quantile_ms(samples_us: list[int], q: float) -> float:
    return sorted(samples_us)[nearest_rank(q, len(samples_us)) - 1] / 1000


def assert_latencies(row, samples_us: list[int]) -> None:
    for q in (0.5, 0.95, 0.99):
        truth = exact_quantile_ms(samples_us, q)
        assert row.latency_ms(q) == pytest.approx(truth, rel=RELATIVE_ERROR, abs=1e-9), q


def run_traffic(store, clock, seconds: int, *, seed: int = 7):
    """Each second: inbound web->emoji at node2, with ~5% 500s; returns per-second samples."""
    rng = random.Random(seed)
    agent = ReportBuilder(node="node2")
    per_second = []
    for _ in range(seconds):
        ok = [int(rng.lognormvariate(8, 1)) for _ in range(rng.randint(5, 40))]
        bad = [int(rng.lognormvariate(10, 0.5)) for _ in range(rng.randint(0, 3))]
        agent.request(ok, src=WEB, dst=EMOJI)
        agent.request(bad, src=WEB, dst=EMOJI, status=500, success=False)
        agent.send(store)
        per_second.append((ok, bad))
        clock.advance(1)
    return per_second


def test_stat_matches_exact_values_and_windows_roll(store, clock) -> None:
    per_second = run_traffic(store, clock, 60)
    assert clock.now == T0 + 60

    def expect(seconds):
        ok = [v for s in seconds for v in s[0]]
        bad = [v for s in seconds for v in s[1]]
        (row,) = stat(store, Resource("deploy", "emojivoto"), window_s=60)
        assert (row.namespace, row.name) == ("emojivoto", "emoji")
        assert (row.success, row.failure) == (len(ok), len(bad))
        assert row.success_rate == len(ok) / (len(ok) + len(bad))
        assert row.rps == pytest.approx((len(ok) + len(bad)) / 60)
        assert_latencies(row, ok + bad)

    expect(per_second)
    # Ten seconds later the first bucket has left the one-minute window.
    clock.advance(10)
    expect(per_second[10:])
    # A 15 minute window still sees everything, until the retention passes.
    clock.advance(15 * 60 - 80)
    (row,) = stat(store, Resource("deploy"), window_s=900)
    assert row.requests == sum(len(a) + len(b) for a, b in per_second)
    clock.advance(20)  # T0+910: the bucket at T0 is older than 15 minutes
    (row,) = stat(store, Resource("deploy"), window_s=900)
    assert row.requests == sum(len(a) + len(b) for a, b in per_second[10:])
    clock.advance(50)  # T0+960: all of it is
    store.expire()
    assert stat(store, Resource("deploy"), window_s=900) == []
    assert store.cells == 0 and not store.request_series


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, 5_000_000), st.booleans()), min_size=1, max_size=200),
    st.integers(0, 9),
)
def test_any_samples_any_second(samples, offset) -> None:
    from agent_reports import Clock

    clock = Clock(T0 + offset)
    store = TelemetryStore(clock=clock)
    agent = ReportBuilder(node="node2")
    for us, ok in samples:
        agent.request([us], status=200 if ok else 503, success=ok)
    agent.send(store)
    clock.now = T0 + 10
    (row,) = stat(store, Resource("pod", "emojivoto", "emoji-1"), window_s=10)
    assert row.success == sum(ok for _, ok in samples)
    assert row.rps == len(samples) / 10
    assert_latencies(row, [us for us, _ in samples])


def test_include_current_gives_exact_totals_right_away(store, clock) -> None:
    agent = ReportBuilder(node="node2")
    agent.request([100] * 7)
    agent.send(store)
    clock.advance(4)
    assert stat(store, Resource("deploy"), window_s=60) == []  # the bucket is still running
    (row,) = stat(store, Resource("deploy"), window_s=60, include_current=True)
    # Six complete buckets before the running one, plus its first 4 s: never less than asked.
    assert row.requests == 7 and row.window_s == 64 and row.rps == pytest.approx(7 / 64)


def _held_and_closed(agent: ReportBuilder, *, held: int, closed_now: int, opened_now: int):
    agent.tcp.append(
        pb.TcpSeries(direction=pb.INBOUND, src=WEB, dst=EMOJI, tls=True,
                     opened=opened_now, closed=closed_now, open_connections=held)
    )  # fmt: skip


def test_tcp_conn_is_the_newest_gauge_whatever_the_window(store, clock) -> None:
    """A held connection shows 1 in every window, and 50 connections that closed long ago are
    not shown open (the gauge of the oldest bucket was shown before)."""
    agent = ReportBuilder(node="node2")

    def second(held: int, *, closed: int = 0, opened: int = 0) -> None:
        _held_and_closed(agent, held=held, closed_now=closed, opened_now=opened)
        agent.send(store)
        clock.advance(1)

    second(50, opened=50)
    for _ in range(9):
        second(50)
    second(0, closed=50)  # T0+10: all 50 closed
    for _ in range(9):
        second(0)
    second(1, opened=1)  # T0+20: a held connection, reported every second from then on
    for _ in range(55):
        second(1)
    clock.advance(0.5)
    for window in (10, 30, 60, 900):
        (row,) = stat(store, Resource("deploy"), window_s=window, include_current=True)
        assert row.tcp_open_connections == 1, window
        (row,) = stat(store, Resource("deploy"), window_s=window)
        assert row.tcp_open_connections == 1, window


def test_tcp_conn_of_an_agent_that_stopped_reporting_goes_to_zero(store, clock) -> None:
    agent = ReportBuilder(node="node2")
    _held_and_closed(agent, held=50, closed_now=0, opened_now=50)
    agent.send(store)
    clock.advance(25)  # no report since: that gauge is no longer known
    (row,) = stat(store, Resource("deploy"), window_s=900, include_current=True)
    assert (row.tcp_opened, row.tcp_open_connections) == (50, 0)


def _mesh_traffic(store, clock) -> None:
    """web (node1) -> emoji-svc (node2), both sides reporting; an unmeshed client -> voting."""
    out, inb = ReportBuilder(node="node1"), ReportBuilder(node="node2")
    out.request([1000] * 8, src=WEB, dst=EMOJI, direction=pb.OUTBOUND)
    out.request([9000] * 2, src=WEB, dst=EMOJI, direction=pb.OUTBOUND, status=500, success=False)
    inb.request([900] * 8, src=WEB, dst=EMOJI)
    inb.request([8000] * 2, src=WEB, dst=EMOJI, status=500, success=False)
    plain = peer("emojivoto", "vote-bot", "vote-bot-1")
    inb.request([500] * 5, src=plain, dst=VOTING, tls=False)
    inb.tcp.append(
        pb.TcpSeries(
            direction=pb.INBOUND, src=WEB, dst=EMOJI, tls=True, opened=3, closed=1,
            read_bytes=6000, write_bytes=12000, open_connections=2,
        )
    )  # fmt: skip
    out.send(store)
    inb.send(store)
    clock.advance(10)


def test_from_to_svc_ns_node(store, clock) -> None:
    _mesh_traffic(store, clock)
    w = 10

    rows = {r.name: r for r in stat(store, Resource("deploy", "emojivoto"), window_s=w)}
    assert sorted(rows) == ["emoji", "voting"]
    assert (rows["emoji"].success, rows["emoji"].failure) == (8, 2)
    assert rows["emoji"].tcp_open_connections == 2
    assert rows["emoji"].read_bytes_per_s == 600 and rows["emoji"].write_bytes_per_s == 1200

    (to,) = stat(
        store,
        Resource("deploy", "emojivoto"),
        to=Resource("deploy", "emojivoto", "emoji"),
        window_s=w,
    )
    assert (to.name, to.success, to.failure) == ("web", 8, 2)
    assert to.latency_ms(0.99) == pytest.approx(9.0, rel=RELATIVE_ERROR)  # outbound latencies

    (frm,) = stat(
        store, Resource("deploy"), from_=Resource("deploy", "emojivoto", "web"), window_s=w
    )
    assert (frm.name, frm.requests) == ("emoji", 10)

    (svc,) = stat(store, Resource("svc", "emojivoto"), window_s=w)
    assert (svc.name, svc.requests) == ("emoji-svc", 10)

    (ns,) = stat(store, Resource("ns"), window_s=w)
    assert (ns.name, ns.requests) == ("emojivoto", 15)

    by_node = {r.name: r.requests for r in stat(store, Resource("node"), window_s=w)}
    assert by_node == {"node1": 10, "node2": 15}
    assert [n.node for n in nodes(store)] == ["node1", "node2"]
    assert nodes(store)[0].pods_enrolled == 3

    assert stat(store, Resource("pod", "emojivoto", "nope"), window_s=w) == []


def test_edges_show_identities_and_mtls(store, clock) -> None:
    _mesh_traffic(store, clock)
    found = {(e.src, e.dst): e for e in edges(store, namespace="emojivoto", window_s=60)}
    assert sorted(found) == [("vote-bot", "voting"), ("web", "emoji")]
    web_emoji = found[("web", "emoji")]
    assert web_emoji.secured
    assert web_emoji.client_identities == {WEB.identity}
    assert web_emoji.server_identities == {EMOJI.identity}
    # Both agents saw the 10 requests: counted once (the client's view). Only the server's agent
    # reported the connections: those count.
    assert web_emoji.connections == 3 and web_emoji.requests == 10
    assert not found[("vote-bot", "voting")].secured
    assert found[("vote-bot", "voting")].client_identities == set()


def test_edges_join_a_client_pod_the_server_named_without_its_deployment(store, clock) -> None:
    out, inb = ReportBuilder(node="node1"), ReportBuilder(node="node2")
    out.request([1000] * 4, src=WEB, dst=EMOJI, direction=pb.OUTBOUND)
    pod_only = pb.Peer()
    pod_only.CopyFrom(WEB)
    pod_only.ClearField("deployment")
    inb.request([900] * 4, src=pod_only, dst=EMOJI)
    out.send(store)
    inb.send(store)
    clock.advance(10)
    (edge,) = edges(store, namespace="emojivoto", window_s=60)
    assert (edge.src, edge.dst, edge.requests) == ("web", "emoji", 4)


@pytest.mark.parametrize("kind", ["deployz", "", "cronjob"])
def test_unknown_kind_is_a_clear_error(kind) -> None:
    with pytest.raises(UnknownResourceKind, match="deploy, pod, ns, svc, node"):
        Resource(kind)


def test_invalid_queries(store) -> None:
    with pytest.raises(InvalidQuery):
        stat(store, Resource("deploy"), from_=Resource("deploy"), to=Resource("deploy"))
    with pytest.raises(InvalidQuery):
        stat(store, Resource("deploy"), window_s=3600)
    with pytest.raises(InvalidQuery):
        stat(store, Resource("deploy"), to=Resource("node", name="node1"))
    assert Resource("deployments").kind == "deployment" and Resource("po").kind == "pod"
