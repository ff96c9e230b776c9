"""A plain Stat answers from the store's per-resource aggregates, and they equal a scan of every
series: on random traffic, with the caps trimming and evicting, gauges moving between buckets."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict

import pytest
from agent_reports import Clock, ReportBuilder, peer

from controlplane.telemetry import Resource, TelemetryStore, edges, query, stat
from controlplane.telemetry.report import Peer, RequestKey, TcpKey
from nodemesh.api import telemetry_pb2 as pb

KINDS = ("deployment", "pod", "namespace", "service", "node")
NAMESPACES = ("shop", "blog")
APPS = ("web", "api", "db")


def _peer(rng: random.Random) -> pb.Peer:
    ns, app = rng.choice(NAMESPACES), rng.choice(APPS)
    if rng.random() < 0.1:  # an unmeshed client: nothing but a namespace, or nothing at all
        return peer(ns if rng.random() < 0.5 else "")
    return peer(
        ns,
        app if rng.random() < 0.9 else "",  # a pod of no Deployment
        f"{app}-{rng.randrange(4)}",
        f"{app}-svc" if rng.random() < 0.8 else "",
        f"spiffe://cluster.local/ns/{ns}/sa/{app}",
    )


def _report(rng: random.Random, node: str) -> ReportBuilder:
    agent = ReportBuilder(node=node)
    for _ in range(rng.randrange(1, 12)):
        status = rng.choice((200, 200, 200, 404, 503))
        agent.request(
            [int(rng.lognormvariate(7, 1.5)) for _ in range(rng.randrange(1, 6))],
            src=_peer(rng),
            dst=_peer(rng),
            direction=rng.choice((pb.INBOUND, pb.OUTBOUND)),
            status=status,
            success=status != 503,
            tls=rng.random() < 0.8,
        )
    for _ in range(rng.randrange(0, 4)):
        agent.tcp.append(
            pb.TcpSeries(
                direction=rng.choice((pb.INBOUND, pb.OUTBOUND)),
                src=_peer(rng),
                dst=_peer(rng),
                tls=rng.random() < 0.8,
                opened=rng.randrange(5),
                closed=rng.randrange(5),
                read_bytes=rng.randrange(10_000),
                write_bytes=rng.randrange(10_000),
                open_connections=rng.choice((0, 0, 1, 3)),
                authz_denied=rng.choice((0, 0, 0, 1)),
            )
        )
    return agent


def _normal(rows: list[query.StatRow]) -> list[dict[str, object]]:
    out = []
    for r in rows:
        d = asdict(r)
        d["latency"] = {k: v for k, v in r.latency.items() if v}  # a zero count is no sample
        out.append(d)
    return out


def _scanned(store: TelemetryStore, resource: Resource, **kw: object) -> list[query.StatRow]:
    """What Stat answered before the aggregates: a walk over every series."""
    first, last, seconds = query._window(store, kw["window_s"], kw["include_current"])
    fresh_from = store.bucket_start(store.clock()) - query.BUCKET_SECONDS
    rows = query._scan(store, resource, None, None, first, last, seconds, fresh_from)
    return sorted(rows.values(), key=lambda r: (r.namespace, r.name))


def _scanned_edges(
    store: TelemetryStore, *, namespace: str = "", window_s: float = 60
) -> list[query.Edge]:
    """What Edges answered before its aggregates: a walk over every series."""
    first, last, _ = query._window(store, window_s, include_current=True)
    keys: list[RequestKey | TcpKey] = [*store.request_series, *store.tcp_series]
    owners: dict[tuple[str, str], str] = {}
    for key in keys:
        for p in (key.src, key.dst):
            if p.pod and p.deployment:
                owners[(p.namespace, p.pod)] = p.deployment

    def workload(p: Peer) -> str:
        return p.deployment or owners.get((p.namespace, p.pod), "") or p.pod

    found: dict[tuple[str, str, str, str], query.Edge] = {}
    # (edge, direction) -> [requests, connections]
    counts: dict[tuple[tuple[str, str, str, str], str], list[int]] = {}

    def count(key: RequestKey | TcpKey, amount: int, slot: int) -> None:
        src, dst = workload(key.src), workload(key.dst)
        if not src or not dst:
            return
        if namespace and namespace not in (key.src.namespace, key.dst.namespace):
            return
        if not amount:
            return
        ident = (key.src.namespace, src, key.dst.namespace, dst)
        edge = found.get(ident) or found.setdefault(ident, query.Edge(*ident))
        edge.secured = edge.secured and key.tls
        if key.src.identity:
            edge.client_identities.add(key.src.identity)
        if key.dst.identity:
            edge.server_identities.add(key.dst.identity)
        tally = counts.setdefault((ident, key.direction), [0, 0])
        tally[slot] += amount

    for rkey, rcells in store.request_series.items():
        if rkey.route:
            continue  # counted among the relay's requests already
        count(rkey, sum(c.responses for c in query._in_window(rcells, first, last)), 0)
    for tkey, tcells in store.tcp_series.items():
        count(tkey, sum(c.opened for c in query._in_window(tcells, first, last)), 1)
    for ident, edge in found.items():
        out = counts.get((ident, "outbound"), [0, 0])
        inb = counts.get((ident, "inbound"), [0, 0])
        edge.requests = out[0] or inb[0]
        edge.connections = out[1] or inb[1]
    return sorted(found.values(), key=lambda e: (e.src_namespace, e.src, e.dst_namespace, e.dst))


def _questions(rng: random.Random) -> Iterator[tuple[Resource, dict[str, object]]]:
    for kind in KINDS:
        for resource in (
            Resource(kind),
            Resource(kind, rng.choice(NAMESPACES)),
            Resource(kind, rng.choice(NAMESPACES), f"{rng.choice(APPS)}-{rng.randrange(4)}"),
            Resource(kind, rng.choice(NAMESPACES), rng.choice(APPS)),
            Resource(kind, "", rng.choice((*NAMESPACES, "node1", "web-svc"))),
        ):
            window_s = rng.choice((10, 30, 60, 300, 900))
            yield resource, {"window_s": window_s, "include_current": rng.random() < 0.7}


@pytest.mark.parametrize(
    ("seed", "max_series", "max_cells"),
    [(1, 20_000, 200_000), (2, 20_000, 200_000), (3, 60, 100_000), (4, 20_000, 400), (5, 45, 300)],
)
def test_stat_from_aggregates_equals_a_scan_of_every_series(
    seed: int, max_series: int, max_cells: int
) -> None:
    rng = random.Random(seed)
    clock = Clock()
    store = TelemetryStore(clock=clock, max_series=max_series, max_cells=max_cells)
    compared = nonempty = edges_seen = 0
    for _ in range(150):
        _report(rng, f"node{rng.randrange(1, 4)}").send(store)
        clock.advance(rng.choice((0.5, 1, 1, 2, 7, 13, 60)))
        if rng.random() < 0.2:
            for resource, kw in _questions(rng):
                got = stat(store, resource, **kw)  # type: ignore[arg-type]
                assert _normal(got) == _normal(_scanned(store, resource, **kw)), (resource, kw)
                compared += 1
                nonempty += bool(got)
            for namespace in ("", *NAMESPACES):
                window_s = rng.choice((10, 60, 900))
                got_edges = edges(store, namespace=namespace, window_s=window_s)
                assert got_edges == _scanned_edges(store, namespace=namespace, window_s=window_s)
                edges_seen += len(got_edges)
    assert compared > 100 and nonempty > compared // 4 and edges_seen > 20
    if max_series < 100 or max_cells < 1_000:
        assert store.stats.series_evicted > 0  # the caps were exercised
    assert store.held_cells <= max_cells


def test_evicted_series_leave_the_aggregates(clock: Clock) -> None:
    """Once every series is gone, nothing is left in the aggregates either."""
    store = TelemetryStore(clock=clock, max_series=5)
    rng = random.Random(9)
    for _ in range(20):
        _report(rng, "node1").send(store)
        clock.advance(3)
    assert store.stats.series_evicted > 0
    clock.advance(20 * 60)  # past the retention: every bucket expires
    store.expire()
    assert not store.request_series and not store.tcp_series
    assert store.groups.cells == 0
    assert all(not table for table in store.groups.by_kind.values())


def test_the_gauge_counts_each_series_newest_value_once(clock: Clock) -> None:
    store = TelemetryStore(clock=clock)
    web, api = peer("shop", "web", "web-0"), peer("shop", "api", "api-0")
    for open_now in (4, 7, 2):  # one series reporting across three buckets
        agent = ReportBuilder(node="node1")
        agent.tcp.append(pb.TcpSeries(direction=pb.INBOUND, src=web, dst=api, open_connections=open_now, opened=1))  # fmt: skip
        agent.send(store)
        clock.advance(10)
    clock.advance(-10)  # still within the last report's bucket
    (row,) = stat(store, Resource("deploy", "shop"), window_s=60, include_current=True)
    assert row.tcp_open_connections == 2 and row.tcp_opened == 3
    clock.advance(30)  # the agent went quiet: its gauge is no longer counted
    (row,) = stat(store, Resource("deploy", "shop"), window_s=60, include_current=True)
    assert row.tcp_open_connections == 0


class _NoWalk(dict):  # type: ignore[type-arg]
    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the query walked every series")

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the query walked every series")


def test_a_plain_stat_reads_no_series(store: TelemetryStore, clock: Clock) -> None:
    """Stat over 10,000 pods read 20,000 series x 6 buckets per call (4.4 s p99 in the scale
    bench); a plain Stat must read the per-resource aggregates only."""
    rng = random.Random(4)
    for _ in range(10):
        _report(rng, "node1").send(store)
        clock.advance(1)
    expected = {kind: _normal(stat(store, Resource(kind), window_s=60)) for kind in KINDS}
    store.request_series = _NoWalk(store.request_series)  # type: ignore[assignment]
    store.tcp_series = _NoWalk(store.tcp_series)  # type: ignore[assignment]
    for kind in KINDS:
        assert _normal(stat(store, Resource(kind), window_s=60)) == expected[kind]
    assert any(expected.values())


def test_an_evicted_connection_series_takes_its_open_connections_along(clock: Clock) -> None:
    store = TelemetryStore(clock=clock, max_series=3)
    web, api = peer("shop", "web", "web-0"), peer("shop", "api", "api-0")
    agent = ReportBuilder(node="node1")
    agent.tcp.append(pb.TcpSeries(direction=pb.INBOUND, src=web, dst=api, open_connections=5))
    agent.request([900], src=web, dst=api)  # shares the connection series' bucket and pod
    agent.send(store)
    (row,) = stat(store, Resource("pod", "shop"), window_s=60, include_current=True)
    assert row.tcp_open_connections == 5
    clock.advance(10)  # the next bucket: the gauge still counts (fresh), the series is older
    agent.request([900], src=web, dst=api)
    for i in range(2):  # two newer series push the connection series out
        agent.request([900], src=web, dst=peer("shop", "api", f"api-{i + 1}"))
    agent.send(store)
    assert store.stats.series_evicted == 1 and not store.tcp_series
    kw: dict[str, object] = {"window_s": 60, "include_current": True}
    for kind in KINDS:
        got = stat(store, Resource(kind), **kw)  # type: ignore[arg-type]
        assert _normal(got) == _normal(_scanned(store, Resource(kind), **kw))
        assert all(r.tcp_open_connections == 0 for r in got)
    pods = stat(store, Resource("pod", "shop"), **kw)  # type: ignore[arg-type]
    assert [r.name for r in pods] == ["api-0", "api-1", "api-2"]


def test_edges_read_no_series(store: TelemetryStore, clock: Clock) -> None:
    """Edges walked every series (20,000 at 500 x 20, 0.16 s a call); it must read the edge
    aggregates only, and answer as before."""
    rng = random.Random(6)
    for _ in range(10):
        _report(rng, f"node{rng.randrange(1, 3)}").send(store)
        clock.advance(1)
    expected = {ns: _scanned_edges(store, namespace=ns) for ns in ("", *NAMESPACES)}
    store.request_series = _NoWalk(store.request_series)  # type: ignore[assignment]
    store.tcp_series = _NoWalk(store.tcp_series)  # type: ignore[assignment]
    for ns, want in expected.items():
        assert edges(store, namespace=ns) == want
    assert expected[""]
