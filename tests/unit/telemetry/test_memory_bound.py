"""The store stays within its series and cell caps, drops the oldest series first, counts it."""

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from agent_reports import ReportBuilder, peer

from controlplane.telemetry import Resource, TelemetryStore, stat


def _flood(store, clock, *, buckets: int, per_bucket: int, latencies: int = 1) -> int:
    rng = random.Random(3)
    made = 0
    for b in range(buckets):
        agent = ReportBuilder(node="node1")
        for i in range(per_bucket):
            agent.request(
                [int(rng.lognormvariate(8, 1)) for _ in range(latencies)],
                src=peer("load", "client", f"c-{b}-{i}"),
                dst=peer("load", "server", f"s-{b}-{i}"),
            )
            made += 1
        agent.send(store)
        clock.advance(10)
    return made


def test_series_cap_drops_the_least_recently_updated(clock) -> None:
    store = TelemetryStore(clock=clock, max_series=100, max_cells=10_000)
    made = _flood(store, clock, buckets=10, per_bucket=30)
    assert len(store.request_series) == 100
    assert store.stats.series_evicted == made - 100
    survivors = {key.src.pod for key in store.request_series}
    # The newest 100: all of the last three buckets and the last ten of the one before.
    assert {f"c-9-{i}" for i in range(30)} <= survivors
    assert not any(pod.startswith(("c-0-", "c-5-")) for pod in survivors)
    # Queries still work on what is left.
    (row,) = stat(store, Resource("deploy", "load"), window_s=900, include_current=True)
    assert row.requests == 100


def test_cell_cap_bounds_memory() -> None:
    """Measured in a fresh interpreter: in the whole suite, control planes that earlier tests
    left running on daemon threads run this same store code meanwhile, and were counted."""
    code = textwrap.dedent(
        f"""
        import gc, sys, tracemalloc
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from agent_reports import Clock
        from test_memory_bound import _flood
        from controlplane.telemetry import TelemetryStore
        clock = Clock()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        store = TelemetryStore(clock=clock, max_series=10_000, max_cells=2_000)
        _flood(store, clock, buckets=25, per_bucket=100, latencies=20)
        store.expire()
        # The parser's cache of checked peers has a bound of its own (PEER_CACHE_SIZE).
        from controlplane.telemetry import report
        report._PEERS.clear()
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
        print(store.cells, store.stats.series_evicted, len(store.request_series), grown)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cells, evicted, series, grown = map(int, done.stdout.split())
    assert cells <= 2_000
    assert evicted == 25 * 100 - series
    # Measured: about 1.1 KB for a series with one cell of 20 latency buckets before the
    # per-resource aggregates; with them (their cells count against the same cap) and the
    # route in every series key, 1.50 KB a cell (3.00 MB for 900 series, 1,827 cells); with
    # the edge aggregates' owner index (each pod named with its Deployment: Edges reads it
    # instead of every series) 3.55 MB. The bound leaves room for allocator and version
    # differences.
    assert grown < 2_000 * 2_000, grown


def test_at_the_cell_cap_a_steady_cluster_keeps_every_series_and_its_last_minute(clock) -> None:
    """Every series reports each second (as agents do): at the cap the oldest bucket goes, for
    all of them; no series is dropped whole (it would come straight back with no past)."""
    # A bucket holds 40 series cells and 44 aggregate cells (the node, the deployment, the
    # namespace, the 40 server pods, and the one client -> server edge): the cap bounds both.
    cap = (40 + 44) * 9
    store = TelemetryStore(clock=clock, max_series=1_000, max_cells=cap)
    for _ in range(30):  # 300 s of 40 series, 10 requests each per 10 s bucket
        agent = ReportBuilder(node="node1")
        for i in range(40):
            agent.request([1000] * 10, src=peer("load", "client", f"c-{i}"),
                          dst=peer("load", "server", f"s-{i}"))  # fmt: skip
        agent.send(store)
        clock.advance(10)
    assert store.cells == 40 * 9 and store.held_cells <= cap
    assert len(store.request_series) == 40 and store.stats.series_evicted == 0
    (row,) = stat(store, Resource("deploy", "load"), window_s=60)
    assert row.requests == 40 * 10 * 6 and row.window_s == 60
    # 15 minutes were asked, 9 buckets are held: the answer says what it covers.
    (row,) = stat(store, Resource("deploy", "load"), window_s=900)
    assert row.window_s == 90 and row.requests == 40 * 10 * 9


def test_the_caps_are_flags_and_a_bad_one_is_named(capsys) -> None:
    from controlplane.main import parse_args

    args = parse_args(["--telemetry-max-series", "500", "--telemetry-max-cells", "9000"])
    assert (args.telemetry_max_series, args.telemetry_max_cells) == (500, 9000)
    assert parse_args([]).telemetry_max_cells == TelemetryStore.max_cells
    with pytest.raises(SystemExit):
        parse_args(["--telemetry-max-cells", "0"])
    assert "--telemetry-max-cells 0: must be at least 1" in capsys.readouterr().err
