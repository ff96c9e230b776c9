"""The agent's memory: giving freed heap back to the kernel, and a report of where it goes.

CPython frees small objects into glibc's heap, which keeps the pages (and, with many threads,
one arena per thread) unless told to return them: after a burst of pods leaves, `TrimLater`
calls malloc_trim(0) once the burst is over, so the agent's RSS falls back instead of staying
at its high-water mark.

SIGUSR2 (a debugging aid, cheap while unused) writes a report to
`<dir>/nodemesh-agent-memory-<pid>.txt`: RSS and smaps totals, glibc's own accounting
(in use vs free-but-kept), pymalloc's arenas, threads by name, the most numerous Python object
types (after a gc pass), the pods' listener sets alive, and once tracing runs (the first signal
starts tracemalloc, each later one reports) the top allocation sites and the growth since the
previous report. SIGUSR1 writes the same report without starting tracemalloc, whose own
tables would otherwise be in the figures (bench/agent_memory.py --reports uses it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

# A trim walks the heap once; after the last unenrolment of a burst this long is quiet enough.
TRIM_DELAY = 2.0
TRACE_FRAMES = 8


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


# mallopt(M_ARENA_MAX): glibc gives each thread that meets contention an arena of its own
# (up to 8 per core), each keeping its freed pages; the agent's threads only make sockets,
# write rules and run gRPC, so two arenas lose nothing and stop that growth.
M_ARENA_MAX = -8
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; call before threads start. True if glibc took it.

    MALLOC_ARENA_MAX in the environment wins (glibc reads it first): an operator's choice."""
    fn = getattr(_LIBC, "mallopt", None)
    if fn is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(fn(M_ARENA_MAX, count))


def trim() -> bool:
    """Return free heap pages to the kernel (glibc only); True if anything was released."""
    fn = getattr(_LIBC, "malloc_trim", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_size_t]
    return bool(fn(0))


def mallinfo() -> dict[str, int] | None:
    """glibc's heap totals in bytes: `in_use`, `free` (kept, not returned), `mmapped`."""
    fn = getattr(_LIBC, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


class TrimLater:
    """Debounced trim: every `poke` pushes the trim `delay` seconds further out."""

    def __init__(self, delay: float = TRIM_DELAY) -> None:
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self.trims = 0

    def poke(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(self.delay, self._run)

    def _run(self) -> None:
        self._handle = None
        gc.collect()
        trim()
        self.trims += 1

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class BurstWatch:
    """Says when a burst of connections is over, so the heap it grew can be handed back.

    Fed the number of open connections now and then: once it has reached `min_burst` and then
    fallen to a quarter of that peak or less, `ended()` is True once (and the watch starts
    over from the current count). malloc_trim then returns the free pages of the peak; pages
    that still hold a small live allocation stay (in the lab most of a burst's growth did).
    """

    def __init__(self, min_burst: int = 64) -> None:
        self.min_burst = min_burst
        self.peak = 0

    def ended(self, open_now: int, peak_since: int = 0) -> bool:
        """`peak_since`: the most open at once since the last call (a burst can come and go
        between two looks)."""
        self.peak = max(self.peak, open_now, peak_since)
        if self.peak >= self.min_burst and open_now * 4 <= self.peak:
            self.peak = open_now
            return True
        return False


# Free heap glibc may keep before the agent hands it back regardless of bursts: steady load
# (keep-alive traffic, new connections' TLS objects) leaves the heap fragmented with free pages
# between live blocks that no burst ever ends, and glibc only trims the top of its heap itself.
FREE_TRIM_BYTES = 4 * 1024 * 1024


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class FreeWatch:
    """Says when glibc keeps enough free heap to be worth a trim: more than `limit` bytes free,
    and the process grown by more than `limit` since the last trim (glibc still counts the
    pages a trim released as free, so the free figure alone would say so every time)."""

    def __init__(self, limit: int = FREE_TRIM_BYTES) -> None:
        self.limit = limit
        self.resident_after_trim = 0

    def due(self) -> bool:
        info = mallinfo()
        if info is None or info["free"] <= self.limit:
            return False
        return _resident_bytes() - self.resident_after_trim > self.limit

    def trimmed(self) -> None:
        self.resident_after_trim = _resident_bytes()


def _proc_totals() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


_PYMALLOC_LINES = {
    "# arenas allocated current": "arenas",
    "# bytes in allocated blocks": "in_use",
    "# bytes in available blocks": "free_in_pools",
}


def pymalloc_stats() -> dict[str, int]:
    """CPython's small-object allocator: its 1 MiB arenas now, the bytes of live objects in
    them and the free blocks kept in partly used pools (an arena goes back to the system
    only when all of it is free). sys._debugmallocstats is the only way to read them and
    writes to fd 2, so that is pointed at a file for the call (a line another thread logs
    meanwhile would land there too: a debugging aid)."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None:
        return {}
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            debug()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        name = _PYMALLOC_LINES.get(key.strip())
        if name is not None:
            found[name] = int(value.strip().replace(",", ""))
    return found


def _closed_listeners(objects: list[object]) -> str:
    """Pods' listener sets alive, and those still alive after they were closed (nothing should
    hold one once its pod is gone), with what refers to them."""
    alive = [o for o in objects if type(o).__name__ == "PodListeners"]
    closed = [o for o in alive if not getattr(o, "servers", True)]
    holders = Counter(
        type(r).__qualname__
        for o in closed
        for r in gc.get_referrers(o)
        if r is not objects and r is not closed and r is not alive
    )
    return (
        f"pod listeners alive: {len(alive)}, of them closed: {len(closed)}; held by:"
        f" {dict(holders)}"
    )


class MemoryReport:
    """What SIGUSR2 (and, without tracing, SIGUSR1) writes; `previous` keeps the last
    tracemalloc snapshot to diff against."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.previous: tracemalloc.Snapshot | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"nodemesh-agent-memory-{os.getpid()}.txt"

    def write(self, *, trace: bool = True) -> Path:
        lines = [f"# nodemesh agent memory, pid {os.getpid()}, {time.strftime('%FT%T%z')}"]
        totals = _proc_totals()
        for key in ("Rss", "Anonymous", "Private_Dirty", "Shared_Clean", "Swap"):
            lines.append(f"{key}: {totals.get(key, 0)} kB")
        heap = mallinfo()
        if heap is not None:
            lines.append("glibc heap: " + ", ".join(f"{k} {v >> 10} kB" for k, v in heap.items()))
        small = pymalloc_stats()
        if tracemalloc.is_tracing():
            lines.append("pymalloc: not readable while tracemalloc runs")
        elif small:
            lines.append(
                f"pymalloc: {small.get('arenas', 0)} arenas of 1 MiB, live objects"
                f" {small.get('in_use', 0) >> 10} kB, free in partly used pools"
                f" {small.get('free_in_pools', 0) >> 10} kB"
            )
        names = Counter(t.name.rstrip("0123456789_-") for t in threading.enumerate())
        lines.append(f"python threads: {dict(names)}")
        try:
            lines.append(f"os threads: {len(os.listdir('/proc/self/task'))}")
        except OSError:
            pass
        # Garbage in cycles first: what is counted below is what something still holds.
        lines.append(f"gc: {gc.collect()} unreachable objects freed before counting")
        objects = gc.get_objects()
        kinds = Counter(type(o).__qualname__ for o in objects)
        lines.append("objects: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common(25)))
        lines.append(_closed_listeners(objects))
        del objects
        if not trace:
            pass
        elif not tracemalloc.is_tracing():
            tracemalloc.start(TRACE_FRAMES)
            # The baseline: the next report's growth is everything allocated and kept since.
            self.previous = tracemalloc.take_snapshot()
            lines.append("tracemalloc started: signal again for allocation sites")
        else:
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            current, peak = tracemalloc.get_traced_memory()
            lines.append(f"traced: {current >> 10} kB now, {peak >> 10} kB peak")
            lines.append("## top allocation sites")
            lines += [str(s) for s in snap.statistics("lineno")[:40]]
            if self.previous is not None:
                lines.append("## growth since the previous report")
                lines += [str(s) for s in snap.compare_to(self.previous, "lineno")[:40]]
                lines.append("## growth by traceback (top 8)")
                for stat in snap.compare_to(self.previous, "traceback")[:8]:
                    lines.append(f"{stat.size_diff >> 10} kB in {stat.count_diff} blocks")
                    lines += ["    " + frame for frame in stat.traceback.format()]
            self.previous = snap
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(lines) + "\n")
        return self.path


def install_report_signal(directory: Path) -> MemoryReport:
    """SIGUSR2 writes a `MemoryReport` into `directory` (from the running loop), SIGUSR1 the
    same without tracemalloc."""
    report = MemoryReport(directory)

    def on_signal(trace: bool) -> None:
        try:
            log.info("memory report written to %s", report.write(trace=trace))
        except Exception:
            log.exception("memory report failed")

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, on_signal, True)
    loop.add_signal_handler(signal.SIGUSR1, on_signal, False)
    return report
