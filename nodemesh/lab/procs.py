"""Finding and stopping the processes that live in a network namespace, by PID."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path


def processes_in(netns_path: str) -> list[int]:
    """PIDs of processes whose network namespace is the one at `netns_path` (same dev/inode)."""
    try:
        target = os.stat(netns_path)
    except OSError:
        return []
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def children(pid: int) -> list[int]:
    """The PIDs of `pid`'s children: for a lab container's wrapper, its entrypoint (PID 1 of the
    container's PID namespace), the process that does the container's work."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


async def kill_processes_in(netns_path: str, *, grace: float = 3.0) -> None:
    """SIGTERM every process in the namespace, SIGKILL what is left after `grace` seconds."""
    pids = processes_in(netns_path)
    if not pids:
        return
    signal_pids(pids, signal.SIGTERM)
    deadline = asyncio.get_running_loop().time() + grace
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        pids = processes_in(netns_path)
        if not pids:
            return
    signal_pids(pids, signal.SIGKILL)
    for _ in range(100):
        if not processes_in(netns_path):
            return
        await asyncio.sleep(0.02)
