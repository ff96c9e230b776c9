"""The telemetry store in process at the scale bench's size: ingest cost per report and Stat
query time, without gRPC, the public API or other processes.

    .venv/bin/python -m bench.stat_store [--nodes 500] [--pods-per-node 20] [--seconds 65]

Fills a store (fake clock) with one report per simulated agent per second, shaped as
bench/controlplane_scale.py's agents send them, then times more reports (best of 3 rounds)
and `query.stat` for pods and deployments over 60 s (best and median of 5). Run it from an
old checkout's directory to compare the two stores (bench/results/controlplane-scale.md).
"""

from __future__ import annotations

import argparse
import pickle
import time

from bench.controlplane_scale import Plan, layout, node_reports
from controlplane import telemetry_child, telemetry_worker
from controlplane.telemetry import query
from controlplane.telemetry.report import parse_report
from controlplane.telemetry.store import TelemetryStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods-per-node", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=65, help="of reports before timing")
    a = ap.parse_args(argv)
    plan = Plan(
        nodes=a.nodes, pods_per_node=a.pods_per_node, pods_per_service=10, churn=1,
        phase_seconds=1, workers=1, stat_calls=1, telemetry=True,
    )  # fmt: skip
    spots = layout(plan)
    reports = [parse_report(r, encoded_size=r.ByteSize()) for r in node_reports(plan, spots)]
    now = [1_000_000.0]
    store = TelemetryStore(clock=lambda: now[0])

    def second() -> None:
        for r in reports:
            store.ingest(r)
        now[0] += 1

    for _ in range(a.seconds):
        second()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(3):
            second()
        best = min(best, (time.perf_counter() - t) / (3 * len(reports)))
    series = len(store.request_series) + len(store.tcp_series)
    print(f"{len(reports)} reports/s, {series} series, {store.cells} cells")
    print(f"ingest per report (store only, best of 3): {best * 1000:.3f} ms")
    for kind in ("pod", "deployment"):
        took = []
        for _ in range(5):
            t = time.perf_counter()
            rows = query.stat(store, query.Resource(kind), window_s=60, include_current=True)
            took.append(time.perf_counter() - t)
        took.sort()
        print(f"stat {kind} ({len(rows)} rows): best {took[0]:.3f} s, median {took[2]:.3f} s")
    took = []
    for _ in range(5):
        t = time.perf_counter()
        found = query.edges(store, window_s=60)
        took.append(time.perf_counter() - t)
    took.sort()
    print(f"edges ({len(found)} edges): best {took[0]:.3f} s, median {took[2]:.3f} s")
    # What the control plane's telemetry worker does for a public-API Stat: the query, the
    # quantiles per row, and the answer pickled to the main process (which unpickles it).
    telemetry_child._store = store
    for kind in ("pod", "deployment"):
        took, moved = [], []
        for _ in range(5):
            now[0] += 1  # a second later: no answer cached from the call before
            second()
            t = time.perf_counter()
            rows = telemetry_child.query(
                "stat", {"group_by": kind, "namespace": "", "source": None,
                         "destination": None, "window_s": 60},
            )  # fmt: skip
            t1 = time.perf_counter()
            [telemetry_worker._unflat(t) for t in pickle.loads(pickle.dumps(rows))]
            took.append(t1 - t)
            moved.append(time.perf_counter() - t1)
        took.sort()
        moved.sort()
        print(
            f"worker stat {kind} ({len(rows)} rows): median {took[2]:.3f} s, "
            f"pickled both ways median {moved[2]:.3f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
