"""CPU time and memory of a process and everything it started, read from /proc.

A process tree, not one PID: an agent that grows worker processes is measured whole. CPU is
utime + stime of every process in the tree (all of its threads), RSS is the sum of VmRSS.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def tree(pids: Iterable[int]) -> set[int]:
    """The given PIDs and all their live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    total = 0
    for pid in tree(pids):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in tree(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def rss_by_process(pids: Iterable[int]) -> dict[str, int]:
    """The tree's RSS per process, named by role: the socket keeper (the container's main
    process when the agent runs with --keep-sockets) apart from the agent itself."""
    out: dict[str, int] = {}
    for pid in sorted(tree(pids)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = b" ".join(argv).decode(errors="replace")
        role = "keeper" if "handover.keeper" in words else "agent" if "agent" in words else "other"
        out[f"{role}-{pid}"] = rss_bytes_one(pid)
    return out


def rss_bytes_one(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """Samples the RSS of each group of PIDs on a thread until stopped; keeps the peak."""

    def __init__(self, groups: dict[str, list[int]], *, interval: float = 0.25) -> None:
        self.groups = groups
        self.interval = interval
        self.peak = {name: 0 for name in groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pids in self.groups.items():
                self.peak[name] = max(self.peak[name], rss_bytes(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
