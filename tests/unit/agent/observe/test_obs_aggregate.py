"""The aggregate: exact counts per series, quantiles within the histogram's bound, deltas,
peers without IPs sharing series, and the memory bounds."""

from __future__ import annotations

import random

import pytest
from obs_fixtures import closed, emoji, opened, outsider, request, web

from nodeagent.observe.events import Peer
from nodeagent.observe.sink import AgentSink
from nodeagent.observe.stats.series import Aggregate
from nodemesh.histogram import RELATIVE_ERROR, LatencyHistogram, bucket_index, nearest_rank


def test_counts_are_exact_per_status_and_classification() -> None:
    sink = AgentSink(node="node1")
    rng = random.Random(1)
    expected: dict[tuple[int | None, str], int] = {}
    src, dst = web(), emoji()
    for _ in range(5000):
        status = rng.choice([200, 200, 200, 404, 500, 503, None])
        ev = request(src, dst, status=status)
        sink.request(ev)
        key = (status, ev.classification)
        expected[key] = expected.get(key, 0) + 1
    got = {(s.status, "success" if s.success else "failure"): s.count
           for s in sink.aggregate.requests.values()}  # fmt: skip
    assert got == expected
    assert expected[(404, "success")] > 0 and expected[(None, "failure")] > 0


def test_latency_quantiles_within_the_histograms_bound_of_the_exact_ones() -> None:
    agg = Aggregate()
    rng = random.Random(2)
    samples_us = [int(rng.lognormvariate(7.5, 1.2)) for _ in range(20_000)]
    src, dst = web(), emoji()
    for us in samples_us:
        agg.request(request(src, dst, latency_s=9.9, first_byte_s=us / 1e6))
    (series,) = agg.requests.values()
    h = LatencyHistogram.from_sparse(*zip(*sorted(series.pending.items()), strict=True))
    assert h.total == len(samples_us) == series.pending_count
    ordered = sorted(samples_us)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = ordered[nearest_rank(q, len(ordered)) - 1]
        got = h.quantile(q)
        assert got is not None
        assert abs(got - exact) <= exact * RELATIVE_ERROR + 1, (q, got, exact)
    # The sum is exact (the time to first byte was used, not the total latency).
    assert series.pending_sum_us == series.sum_us
    assert abs(series.sum_us - sum(samples_us)) <= len(samples_us)


def test_inlined_bucket_index_matches_the_shared_histogram() -> None:
    agg = Aggregate()
    src, dst = web(), emoji()
    values = [0, 1, 127, 128, 129, 1000, 1007, 1008, 65_535, 10**7, 10**13]
    for us in values:
        agg.request(request(src, dst, first_byte_s=us / 1e6))
    (series,) = agg.requests.values()
    expected: dict[int, int] = {}
    for us in values:
        expected[bucket_index(us)] = expected.get(bucket_index(us), 0) + 1
    assert series.pending == expected


def test_clients_outside_the_mesh_share_one_series_whatever_their_ip() -> None:
    agg = Aggregate()
    dst = emoji()
    for i in range(300):
        agg.request(request(outsider(f"192.0.2.{i % 250}"), dst, direction="inbound"))
        # A new Peer object per request for the same pod lands in the same series too.
        agg.request(request(Peer(**vars_of(web())), dst))
    assert len(agg.requests) == 2
    assert sorted(s.count for s in agg.requests.values()) == [300, 300]


def vars_of(p: Peer) -> dict:
    return {f: getattr(p, f) for f in p.__slots__}


def test_tcp_counts_bytes_and_the_open_gauge() -> None:
    agg = Aggregate()
    src, dst = web(), emoji()
    for conn in range(10):
        agg.tcp_opened(opened(conn, src, dst))
    for conn in range(7):
        agg.tcp_closed(closed(conn, src, dst, read=100 + conn, write=1000))
    (s,) = agg.tcp.values()
    assert (s.opened, s.closed, s.open) == (10, 7, 3)
    assert s.read_bytes == sum(100 + c for c in range(7)) and s.write_bytes == 7000
    assert agg.open_connections == 3
    # A close for a connection opened before this agent started: counted, the gauge untouched.
    agg.tcp_closed(closed(999, src, dst, read=1, write=1))
    assert (s.closed, s.open, agg.open_connections) == (8, 3, 3)


def test_series_cap_evicts_idle_reported_series_first_then_drops() -> None:
    agg = Aggregate(max_series=3)
    dst = emoji()
    for i in range(3):
        agg.request(request(web(i), dst))
    # Everything is still pending (unreported): nothing may be evicted, the event is dropped.
    agg.request(request(web(9), dst))
    assert len(agg.requests) == 3 and agg.dropped == 1
    # After a report the oldest idle series can go.
    for s in agg.requests.values():
        s.pending, s.pending_count = {}, 0
    agg.generation += 1
    agg.request(request(web(0), dst))  # web-0 is active again
    agg.request(request(web(9), dst))
    pods = sorted(key[1].pod for key in agg.requests)
    assert len(pods) == 3 and "web-9" in pods and "web-0" in pods


def test_idle_series_expire_but_open_connections_keep_theirs() -> None:
    agg = Aggregate()
    src, dst = web(), emoji()
    agg.request(request(src, dst))
    agg.tcp_opened(opened(1, src, dst))
    for s in agg.requests.values():
        s.pending, s.pending_count = {}, 0
    for s in agg.tcp.values():
        s.p_opened = 0
    agg.generation += 1000
    assert agg.expire_idle(idle_generations=10) == 1
    assert not agg.requests and len(agg.tcp) == 1
    # The same peers after expiry get a fresh series (the alias table forgot the old one).
    agg.request(request(src, dst))
    assert sum(s.count for s in agg.requests.values()) == 1


@pytest.mark.parametrize("latency", [-1.0, 0.0])
def test_negative_or_zero_latency_counts_as_zero(latency: float) -> None:
    agg = Aggregate()
    agg.request(request(web(), emoji(), latency_s=latency))
    (s,) = agg.requests.values()
    assert s.pending == {0: 1} and s.buckets[0] == 1
