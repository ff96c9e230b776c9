"""What building Stat answers ahead costs while nobody asks (controlplane.stat_cache.warm, as
the control plane runs it after start: public_api.build_ahead), in process, no gRPC.

    .venv/bin/python -m bench.stat_build_ahead [--nodes 500] [--seconds 30] [--rounds 2]

A telemetry worker in its own process (as the control plane runs it) gets every simulated
agent's report each second (the scale bench's reports: `--nodes` x 20 pods), spread over the
second. Then, in turns of `--seconds` each, alternately off and on (`--rounds` of each), the CPU
of the worker and of this process (the loop's side: the index's groups, the hand-over) over the
turn: off, the reports alone; on, the reports and the answers built ahead for Stat pod and Stat
deployment over every namespace. The difference is the cost of building ahead. Also prints how
many builds ran and the held answers' largest age seen (sampled every 50 ms; the kept answers'
limit is 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from bench.controlplane_scale import Plan, PodSpot, build_report, layout
from bench.stat_cold import index_of
from controlplane.public_api import BUILT_AHEAD, DEFAULT_WINDOW, PublicService
from controlplane.stat_cache import StatCache
from controlplane.telemetry_worker import TelemetryWorker, WorkerTelemetry

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cluster(nodes: int, pods_per_node: int) -> tuple[Plan, list[PodSpot], list[bytes]]:
    plan = Plan(
        nodes=nodes, pods_per_node=pods_per_node, pods_per_service=10, churn=1,
        phase_seconds=1, workers=1, stat_calls=1,
    )  # fmt: skip
    spots = layout(plan)
    first: dict[int, PodSpot] = {}
    for spot in spots:
        first.setdefault(spot.service, spot)
    peer_of = {s: first[(s + 1) % plan.services] for s in range(plan.services)}
    by_node: dict[str, list[PodSpot]] = {}
    for spot in spots:
        by_node.setdefault(spot.node, []).append(spot)
    return (
        plan,
        spots,
        [build_report(n, m, peer_of).SerializeToString() for n, m in by_node.items()],
    )


async def run(nodes: int, pods_per_node: int, seconds: float, rounds: int, fill_s: float) -> None:
    plan, spots, raws = cluster(nodes, pods_per_node)
    worker = TelemetryWorker(
        "process", max_series=500_000, max_cells=5_000_000, log_level="WARNING"
    )
    pid = await worker.start()
    api = PublicService(
        index=index_of(plan, spots), telemetry=WorkerTelemetry(worker), broker=None,  # type: ignore[arg-type]
        hub=None, source_name="bench", gate=None,  # type: ignore[arg-type]
    )  # fmt: skip
    api.sends_encoded_stat = True
    stop = False

    async def feed() -> None:
        step = max(1, len(raws) // 10)
        while not stop:
            t = time.perf_counter()
            for i in range(0, len(raws), step):
                batch = raws[i : i + step]
                asyncio.ensure_future(asyncio.gather(*(worker.report(r, None) for r in batch)))
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(0.0, 1 - (time.perf_counter() - t)))

    feeder = asyncio.ensure_future(feed())
    await asyncio.sleep(fill_s)
    print(f"{plan.pods} pods, {len(raws)} agents; turns of {seconds:g} s", flush=True)
    results: dict[str, list[float]] = {"off": [], "on": []}
    for n in range(2 * rounds):
        on = n % 2 == 1
        cache: StatCache[object] = StatCache()
        api.stat_cache = cache  # type: ignore[assignment]
        oldest = 0.0
        here, there, t0 = time.process_time(), cpu_s(pid), time.perf_counter()
        if on:
            api.build_ahead(seconds)
        while time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.05)
            for held in cache._held.values():
                if held.answer is not None:
                    oldest = max(oldest, cache.clock() - held.ready)
        wall = time.perf_counter() - t0
        here, there = time.process_time() - here, cpu_s(pid) - there
        cache.close()
        results["on" if on else "off"].append((here + there) / wall)
        print(
            f"build ahead {'on ' if on else 'off'}: worker {there / wall:.3f} cores, loop's "
            f"process {here / wall:.3f} cores, {cache.builds} builds of {', '.join(BUILT_AHEAD)} "
            f"(window {DEFAULT_WINDOW} s), oldest held answer {oldest:.2f} s, "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    stop = True
    await feeder
    worker.close()
    off, on = min(results["off"]), min(results["on"])
    print(f"cost: {on - off:+.3f} cores (min of each: on {on:.3f}, off {off:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods-per-node", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0, help="each turn, off or on")
    ap.add_argument("--rounds", type=int, default=2, help="turns of each")
    ap.add_argument("--fill", type=float, default=15.0, help="seconds of reports before")
    a = ap.parse_args()
    asyncio.run(run(a.nodes, a.pods_per_node, a.seconds, a.rounds, a.fill))


if __name__ == "__main__":
    main()
