"""Giving memory back: the debounced heap trim after pods leave, the arena cap, the SIGUSR2
report, and the per-pod counters that are no longer kept while unexposed."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
from pathlib import Path

from agent_fakes import FakeListeners, FakeRules, MemoryStore, fake_netns, pod_pb, snapshot

from nodeagent import heap
from nodeagent.enrol.enrolment import AddRequest, Enroller
from nodeagent.observe import metrics
from nodeagent.upstream.table import DestinationTable


async def test_trim_runs_once_after_a_burst_of_pokes() -> None:
    trimmer = heap.TrimLater(delay=0.05)
    for _ in range(20):  # a burst: each poke lets the loop run, none waits out the delay
        trimmer.poke()
        await asyncio.sleep(0)
    assert trimmer.trims == 0  # still inside the burst
    await asyncio.sleep(0.3)
    assert trimmer.trims == 1
    trimmer.poke()
    trimmer.cancel()
    await asyncio.sleep(0.1)
    assert trimmer.trims == 1


def test_trim_returns_freed_heap_to_the_kernel() -> None:
    if heap.mallinfo() is None:
        return  # not glibc: nothing to give back this way
    # Many mid-sized blocks (below the mmap threshold) freed all at once leave free heap behind.
    blocks = [bytearray(4000) for _ in range(20000)]
    del blocks
    gc.collect()
    before = heap.mallinfo()
    assert before is not None
    heap.trim()
    after = heap.mallinfo()
    assert after is not None and after["free"] < before["free"]


async def test_unenrolment_asks_for_a_trim(tmp_path: Path) -> None:
    released: list[int] = []
    table = DestinationTable("node1")
    open_: dict[str, FakeListeners] = {}
    enroller = Enroller(
        table=table,
        rules=FakeRules(),
        listeners=lambda pod: FakeListeners(pod, open_),
        store=MemoryStore(tmp_path / "state.json"),
        find_netns=lambda ips, skip: {},
        mark=0x6E6D,
        pod_wait=0.3,
        released=lambda: released.append(1),
    )
    change = table.apply(snapshot(pod_pb("web")))
    assert change is not None
    enroller.table_changed(change)
    netns, _ = fake_netns(tmp_path, "netns-web")
    req = AddRequest(
        container_id="ctr-web", ifname="eth0", netns=str(netns), namespace="shop",
        name="web", uid="uid-web", ips=("10.0.0.2",),
    )  # fmt: skip
    assert (await enroller.add(req)).meshed
    assert released == []
    await enroller.delete("ctr-web", str(netns))
    assert released == [1] and open_ == {}


async def test_sigusr1_writes_the_report_without_tracing(tmp_path: Path) -> None:
    import tracemalloc

    report = heap.install_report_signal(tmp_path)
    loop = asyncio.get_running_loop()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.2)
        text = report.path.read_text()
        assert re.search(r"pymalloc: \d+ arenas of 1 MiB, live objects \d+ kB", text)
        assert "pod listeners alive: 0" in text and "tracemalloc" not in text
        assert not tracemalloc.is_tracing()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)


async def test_sigusr2_writes_a_report_then_allocation_sites(tmp_path: Path) -> None:
    report = heap.install_report_signal(tmp_path)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        await asyncio.sleep(0.2)
        first = report.path.read_text()
        assert "Rss:" in first and "threads" in first and "tracemalloc started" in first
        # Whether growth is live objects or free blocks pymalloc cannot give back.
        assert re.search(r"pymalloc: \d+ arenas of 1 MiB, live objects \d+ kB", first)
        keep = [bytearray(1000) for _ in range(200)]  # noqa: F841 (growth the diff must show)
        os.kill(os.getpid(), signal.SIGUSR2)
        await asyncio.sleep(0.5)
        second = report.path.read_text()
        assert "## top allocation sites" in second and "test_agent_heap.py" in second
        assert "## growth since the previous report" in second
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR2)
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
        import tracemalloc

        tracemalloc.stop()


def test_unexposed_legacy_counters_keep_no_label_children() -> None:
    assert not metrics.LEGACY_TCP_COUNTERS
    before = len(metrics.TCP_READ._metrics)
    stats = [metrics.PodTcpStats("inbound", "shop", f"p{i}") for i in range(50)]
    for s in stats:
        s.open.inc()
        s.read.inc(100)
        s.current.inc()
        s.current.dec()
    assert len(metrics.TCP_READ._metrics) == before
    # The one family still exposed per pod is kept, and forgotten with the pod.
    stats[0].failures.inc()
    assert metrics.UPSTREAM_FAILURES.labels("inbound", "shop", "p0")._value.get() == 1
    for i in range(50):
        metrics.forget_pod("shop", f"p{i}")
    assert ("inbound", "shop", "p0") not in metrics.UPSTREAM_FAILURES._metrics


def test_burst_watch_says_once_when_a_burst_of_connections_is_over() -> None:
    watch = heap.BurstWatch(min_burst=64)
    assert not any(watch.ended(n) for n in (0, 10, 30, 20, 5))  # never a burst
    assert not any(watch.ended(n) for n in (100, 400, 300, 150))  # still busy
    assert watch.ended(90)  # a quarter of the 400 peak or less
    assert not watch.ended(80)  # once
    assert watch.ended(0)  # the 90 that stayed open were a burst of their own
    assert not watch.ended(0) and not watch.ended(40)
    assert not watch.ended(200) and watch.ended(50)  # the next one
    assert watch.ended(3, peak_since=500)  # came and went between two looks


def test_free_watch_asks_for_a_trim_when_steady_load_left_free_heap_behind() -> None:
    if heap.mallinfo() is None:
        return  # not glibc
    watch = heap.FreeWatch(limit=4 * 1024 * 1024)
    heap.trim()
    watch.trimmed()
    assert not watch.due()
    # What steady traffic does: many mid-sized blocks, a few of them still live, so glibc's
    # own top-of-heap trim gives nothing back and the process stays at its high-water mark.
    blocks = [bytearray(4000) for _ in range(20000)]
    live = blocks[::64]
    del blocks
    gc.collect()
    assert watch.due()
    resident = heap._resident_bytes()
    heap.trim()
    watch.trimmed()
    assert heap._resident_bytes() < resident - 40 * 1024 * 1024  # given back
    assert not watch.due()  # and not asked for again until the heap grows anew
    del live
