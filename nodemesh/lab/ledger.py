"""An append-only record of everything a lab creates, written before it is created.

`lab down` replays it, so it can remove a lab whose supervisor was killed or whose `lab up`
failed halfway. Processes are recorded with their start time so a reused PID is never killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # a zombie is gone for our purposes, even if nobody has reaped it
    return int(fields[19])


@dataclass(frozen=True)
class Entry:
    kind: str  # netns | path | process
    data: dict[str, Any]


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, kind: str, **data: Any) -> None:
        line = json.dumps({"kind": kind, **data}, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def netns(self, name: str) -> None:
        self._append("netns", name=name)

    def path_created(self, path: Path) -> None:
        self._append("path", path=str(path))

    def process(self, pid: int, *, role: str) -> None:
        start = process_start_time(pid)
        self._append("process", pid=pid, start=start, role=role)

    def entries(self) -> Iterator[Entry]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line after a crash: nothing was created for it yet
            kind = rec.pop("kind", None)
            if isinstance(kind, str):
                yield Entry(kind, rec)


def same_process(pid: int, start: int | None) -> bool:
    """True when `pid` still names the process that was recorded (not a reused PID)."""
    return start is not None and process_start_time(pid) == start


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
