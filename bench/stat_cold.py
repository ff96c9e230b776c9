"""A cold Stat, as the public API builds it, in process: the telemetry store and the cluster
index at the scale bench's size, no gRPC and no other process (CPU per build, which a shared
machine's load moves least).

    .venv/bin/python -m bench.stat_cold [--nodes 500] [--pods-per-node 20] [--rounds 3]

Fills a store with `--seconds` of the scale bench's reports (one per simulated agent and second,
on a store clock that steps a second per round: 65 s makes 6 complete 10 s buckets, their sums
prepared as the worker prepares them, and a running one half full), applies
the bench's objects to a ClusterIndex, then times `PublicService._stat` (the store's query with
its quantiles, the rows joined with the index, the protobuf answer) for pods and deployments
over all namespaces, with the telemetry worker inline (its CPU counted with the rest). Prints
CPU and wall time per build and the answer's size and digest (equal digests: equal answers;
run it from an old checkout's directory to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import time

from bench.controlplane_scale import (
    SERVICES_PER_NAMESPACE,
    Plan,
    PodSpot,
    app_of,
    endpoint,
    layout,
    node_reports,
    pod_obj,
    slice_obj,
)
from controlplane import telemetry_worker
from controlplane.index import ClusterIndex
from controlplane.public_api import PublicService
from controlplane.sources.events import KINDS, EventType, KindSynced, ObjectChanged


def index_of(plan: Plan, spots: list[PodSpot]) -> ClusterIndex:
    idx = ClusterIndex()

    def put(obj: dict) -> None:
        idx.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))

    for n in range(1, plan.nodes + 1):
        put({"kind": "Node", "metadata": {"name": f"node{n}"}, "spec": {"podCIDR": ""}})
    for i in range((plan.services + SERVICES_PER_NAMESPACE - 1) // SERVICES_PER_NAMESPACE):
        labels = {"nodemesh.io/mesh": "enabled"}
        put({"kind": "Namespace", "metadata": {"name": f"ns{i}", "labels": labels}})
    by_service: dict[int, list[PodSpot]] = {}
    for spot in spots:
        by_service.setdefault(spot.service, []).append(spot)
    for s in range(plan.services):
        ns, app = app_of(s)
        owner = {"kind": "Deployment", "name": app, "controller": True}
        put({"kind": "Deployment", "metadata": {"name": app, "namespace": ns}})
        put(
            {
                "kind": "ReplicaSet",
                "metadata": {"name": f"{app}-rs", "namespace": ns, "ownerReferences": [owner]},
            }
        )
        put({"kind": "Service", "metadata": {"name": app, "namespace": ns},
             "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250 + 1}",
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})  # fmt: skip
        for p in by_service[s]:
            put(pod_obj(ns, app, p.name, p.node, p.ip))
        put(slice_obj(ns, app, [endpoint(ns, p.name, p.node, p.ip) for p in by_service[s]]))
    for kind in KINDS:
        idx.apply(KindSynced(kind))
    return idx


async def measure(plan: Plan, rounds: int, seconds: int) -> None:
    spots = layout(plan)
    raws = [r.SerializeToString() for r in node_reports(plan, spots)]
    idx = index_of(plan, spots)
    worker = telemetry_worker.TelemetryWorker("inline", max_series=500_000, max_cells=5_000_000)
    await worker.start()
    # A store clock that steps one second per round of reports (every agent reports each
    # second): `seconds` of traffic, its complete buckets' sums prepared as the worker does.
    store = telemetry_worker.child.the_store()
    offset = [time.time() // 10 * 10 + 5 - seconds]
    store.clock = lambda: offset[0]  # fixed: equal answers give equal digests, run to run
    for _ in range(seconds):
        await asyncio.gather(*(worker.report(r, None) for r in raws))
        offset[0] += 1
    port = telemetry_worker.WorkerTelemetry(worker)
    api = PublicService(
        index=idx, telemetry=port, broker=None, hub=None, source_name="bench", gate=None,  # type: ignore[arg-type]
    )  # fmt: skip
    for kind in ("pod", "deployment"):
        for r in range(rounds):
            # As in the worker (controlplane.gc_pauses): what survived a full collection is
            # out of the collector's sight, so a build pays for collecting its own objects only.
            gc.collect()
            gc.freeze()
            cpu, wall = time.process_time(), time.perf_counter()
            answer = await api._stat(port, kind, "", "", None, None, 60)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            raw = answer.SerializeToString()
            digest = hashlib.sha256(raw).hexdigest()[:12]
            print(f"stat {kind} ({len(answer.rows)} rows) round {r + 1}: cpu {cpu:.3f} s, "
                  f"wall {wall:.3f} s, {len(raw)} bytes, sha256 {digest}")  # fmt: skip
    worker.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods-per-node", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=65, help="of reports in the store")
    a = ap.parse_args(argv)
    plan = Plan(
        nodes=a.nodes, pods_per_node=a.pods_per_node, pods_per_service=10, churn=1,
        phase_seconds=1, workers=1, stat_calls=1,
    )  # fmt: skip
    asyncio.run(measure(plan, a.rounds, a.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
