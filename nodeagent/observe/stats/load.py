"""The agent's own load, as the telemetry report carries it: CPU seconds and resident memory."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc/<pid>/stat line, in seconds."""
    # The command name (field 2) may hold spaces and parentheses; count from its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_seconds(proc: Path = Path("/proc/self")) -> float:
    try:
        return parse_cpu_seconds((proc / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return 0.0


def rss_bytes(proc: Path = Path("/proc/self")) -> int:
    try:
        return int((proc / "statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
