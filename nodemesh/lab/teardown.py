"""`lab down`: remove everything a lab made, from its ledger, whether or not its supervisor is
alive. Processes are stopped by PID (checked against their recorded start time) and by membership
of the lab's namespaces; then namespaces, /etc/netns entries and the state directory go."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from nodemesh.lab.client import LabClient, LabUnavailable
from nodemesh.lab.ledger import Ledger, same_process
from nodemesh.lab.paths import ETC_NETNS, LabPaths
from nodemesh.lab.procs import processes_in, signal_pids

NETNS_DIR = Path("/run/netns")


@dataclass
class Removed:
    processes: list[int] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone; reap it if it is ours.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def down(paths: LabPaths, *, graceful_timeout: float = 60.0) -> Removed:
    removed = Removed()
    ledger = Ledger(paths.ledger)
    entries = list(ledger.entries())

    # 1. Ask a live supervisor to stop its pods the normal way (CNI DEL, SIGTERM).
    sup = [e.data for e in entries if e.kind == "process" and e.data.get("role") == "supervisor"]
    live_sup = [d for d in sup if same_process(d["pid"], d.get("start"))]
    if live_sup and paths.socket.exists():
        try:
            LabClient(paths, timeout=5).call({"op": "shutdown"})
            _wait_gone([d["pid"] for d in live_sup], graceful_timeout)
        except LabUnavailable as err:
            removed.problems.append(f"supervisor did not answer ({err}); stopping it by PID")

    # 2. Every recorded process that is still the one recorded, whole process group first.
    recorded = [
        e.data
        for e in entries
        if e.kind == "process" and same_process(e.data["pid"], e.data.get("start"))
    ]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for rec in recorded:
            try:
                os.killpg(rec["pid"], sig)
            except (ProcessLookupError, PermissionError):
                signal_pids([rec["pid"]], sig)
        left = _wait_gone([rec["pid"] for rec in recorded], 5.0)
        removed.processes.extend(rec["pid"] for rec in recorded if rec["pid"] not in left)
        recorded = [rec for rec in recorded if rec["pid"] in left]
        if not recorded:
            break

    # 3. Mounts under the state directory (each node's /run/netns and its pods' netns binds),
    # so that no namespace outlives its name.
    for point in mounts_under(paths.root):
        res = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
        if res.returncode != 0:
            removed.problems.append(f"umount {point}: {res.stderr.strip()}")

    # 4. Namespaces: the ledger's, plus any left under this lab's prefix (a crash between
    # creating and recording cannot happen, since we record first, but a stale run might).
    names = [e.data["name"] for e in entries if e.kind == "netns"]
    if NETNS_DIR.is_dir():
        names += sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(paths.prefix))
    ordered = list(dict.fromkeys(reversed(names)))  # pods before nodes before the underlay
    for name in ordered:
        path = NETNS_DIR / name
        if not path.exists():
            continue
        pids = processes_in(str(path))
        if pids:
            signal_pids(pids, signal.SIGTERM)
            left = _wait_gone(pids, 3.0)
            signal_pids(left, signal.SIGKILL)
            _wait_gone(left, 3.0)
            removed.processes.extend(pids)
        res = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
        if res.returncode == 0:
            removed.netns.append(name)
        else:
            removed.problems.append(f"ip netns del {name}: {res.stderr.strip()}")

    # 5. Files outside the state directory, then the state directory itself.
    for e in entries:
        if e.kind == "path":
            p = Path(e.data["path"])
            if p.exists() and _is_ours(p, paths):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                removed.paths.append(str(p))
    if paths.root.exists():
        shutil.rmtree(paths.root, ignore_errors=True)
        removed.paths.append(str(paths.root))
    for empty in (ETC_NETNS, paths.root.parent):
        try:
            empty.rmdir()  # only when empty: another lab may still use it
        except OSError:
            pass
    return removed


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` in this mount namespace, deepest first."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if Path(point) == root or root in Path(point).parents:
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def _is_ours(p: Path, paths: LabPaths) -> bool:
    """Only /etc/netns/<this lab's prefix>* or things under the state dir are ever removed."""
    return (p.parent == ETC_NETNS and p.name.startswith(paths.prefix)) or paths.root in p.parents
