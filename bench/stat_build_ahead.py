"""What building Stat answers ahead costs while nobody asks (controlplane.stat_cache.warm, as
the control plane runs it after start: public_api.build_ahead), in process, no gRPC.

    .venv/bin/python -m bench.stat_build_ahead [--nodes 500] [--seconds 30] [--rounds 2]

A telemetry worker in its own process (as the control plane runs it) gets every simulated
agent's report each second (the scale bench's reports: `--nodes` x 20 pods), spread over the
second, for `--fill` seconds. Then, still with the reports: answers built ahead for Stat pod and
Stat deployment over every namespace for `--seconds`, counting the builds and sampling the held
answers' age every 50 ms (the largest seen; kept answers are never given past 2 s). Then, the
reports stopped and the store's clock stopped with them (their CPU varies by more than the
builds cost on a shared machine; with the clock on, the window's traffic would age out), turns of
`--seconds` alternately off and on (`--rounds` of each): the CPU of the worker and of this
process (the loop's side: the index's groups, the hand-over) over each turn; on minus off is
what building ahead costs, at the pace it ran at.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from bench.controlplane_scale import Plan, PodSpot, layout, node_reports
from bench.stat_cold import index_of
from controlplane import telemetry_child
from controlplane.gc_pauses import keep_full_collections_short
from controlplane.public_api import BUILT_AHEAD, DEFAULT_WINDOW, PublicService
from controlplane.stat_cache import StatCache
from controlplane.telemetry_worker import TelemetryWorker, WorkerTelemetry

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _freeze_store_clock() -> None:
    """In the worker: the store's clock stands still from now (its answers stay the same)."""
    store = telemetry_child.the_store()
    now = store.clock()
    store.clock = lambda: now


def cluster(nodes: int, pods_per_node: int) -> tuple[Plan, list[PodSpot], list[bytes]]:
    plan = Plan(
        nodes=nodes, pods_per_node=pods_per_node, pods_per_service=10, churn=1,
        phase_seconds=1, workers=1, stat_calls=1,
    )  # fmt: skip
    spots = layout(plan)
    return plan, spots, [r.SerializeToString() for r in node_reports(plan, spots)]


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
    sent: list[asyncio.Future[object]] = []

    async def feed() -> None:
        step = max(1, len(raws) // 10)
        while not stop:
            t = time.perf_counter()
            for i in range(0, len(raws), step):
                batch = raws[i : i + step]
                sent.append(asyncio.gather(*(worker.report(r, None) for r in batch)))
                await asyncio.sleep(0.1)
            await asyncio.gather(*sent)
            sent.clear()
            await asyncio.sleep(max(0.0, 1 - (time.perf_counter() - t)))

    feeder = asyncio.ensure_future(feed())
    await asyncio.sleep(fill_s)
    print(f"{plan.pods} pods, {len(raws)} agents; turns of {seconds:g} s", flush=True)

    async def turn(on: bool) -> tuple[float, int]:
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
        print(
            f"{'reports and ' if not stop else ''}build ahead {'on ' if on else 'off'}: worker "
            f"{there / wall:.3f} cores, loop's process {here / wall:.3f} cores, "
            f"{cache.builds} builds of {', '.join(BUILT_AHEAD)} (window {DEFAULT_WINDOW} s, "
            f"{cache.builds / len(BUILT_AHEAD) / wall:.2f}/s each), oldest held answer "
            f"{oldest:.2f} s, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        return (here + there) / wall, cache.builds

    await turn(True)
    stop = True
    await feeder
    from bench import stat_build_ahead as by_name  # picklable when run as __main__

    await worker.call(by_name._freeze_store_clock)
    results: dict[bool, list[tuple[float, int]]] = {False: [], True: []}
    for n in range(2 * rounds):
        on = n % 2 == 1
        results[on].append(await turn(on))
    worker.close()
    off = min(c for c, _ in results[False])
    on_cores, builds = min(results[True])
    print(
        f"cost: {on_cores - off:+.3f} cores at {builds / seconds:.2f} builds/s "
        f"(min of each: on {on_cores:.3f}, off {off:.3f}); "
        f"{(on_cores - off) * seconds / builds * 1e3:.0f} ms of CPU a build"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods-per-node", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0, help="each turn, off or on")
    ap.add_argument("--rounds", type=int, default=2, help="turns of each")
    ap.add_argument("--fill", type=float, default=15.0, help="seconds of reports before")
    a = ap.parse_args()
    keep_full_collections_short()  # as the control plane's process runs
    asyncio.run(run(a.nodes, a.pods_per_node, a.seconds, a.rounds, a.fill))


if __name__ == "__main__":
    main()
