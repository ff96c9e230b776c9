"""Snapshots of what a test could leave behind on the host, and an assertion that it did not.

Covers: named network namespaces (/run/netns), links in the root netns, child processes of the
test process (zombies included: an unreaped child is a leak too), and files under /etc/netns
and /run/nodemesh. Reading is done from /proc and /sys only, so taking a snapshot starts no
process of its own.

Other engineers' tests may run at the same time on a shared machine; `only` narrows the check
to names a test owns (a prefix), while CI, where nothing else runs, can check everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

NETNS_DIR = Path("/run/netns")
WATCHED_DIRS = (Path("/etc/netns"), Path("/run/nodemesh"))


@dataclass(frozen=True)
class Snapshot:
    netns: frozenset[str]
    links: frozenset[str]
    children: frozenset[str]
    files: frozenset[str]


def _listdir(path: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(path))
    except FileNotFoundError:
        return frozenset()


def _children() -> frozenset[str]:
    me = os.getpid()
    found: set[str] = set()
    for entry in _listdir(Path("/proc")):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue  # gone while we looked
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me:
            found.add(f"{entry} {comm}")
    return frozenset(found)


# A lab keeps its deleted pods' logs (bounded, nodemesh.lab.pods.GONE_LOGS_KEPT) until it is taken
# down: a test that deletes pods of a lab it shares with the next test leaves them on purpose.
# Taking the lab down must still remove them, with the rest of its directory.
KEPT_UNTIL_DOWN = "logs-gone"


def _files() -> frozenset[str]:
    found: set[str] = set()
    for top in WATCHED_DIRS:
        for root, dirs, names in os.walk(top):
            if KEPT_UNTIL_DOWN in dirs and root.startswith("/run/nodemesh/"):
                dirs.remove(KEPT_UNTIL_DOWN)
            found.update(os.path.join(root, n) for n in names + dirs)
    return frozenset(found)


def snapshot() -> Snapshot:
    """What exists now (netns names, root-netns links, child processes, watched files)."""
    return Snapshot(
        netns=_listdir(NETNS_DIR),
        links=_listdir(Path("/sys/class/net")),
        children=_children(),
        files=_files(),
    )


def leaks(
    before: Snapshot, after: Snapshot, *, only: Callable[[str], bool] | None = None
) -> dict[str, list[str]]:
    """What is in `after` but not in `before`, per kind; `only` filters netns, links, files."""
    found: dict[str, list[str]] = {}
    for f in fields(Snapshot):
        new = getattr(after, f.name) - getattr(before, f.name)
        if only is not None and f.name != "children":
            new = {item for item in new if only(item)}
        if new:
            found[f.name] = sorted(new)
    return found


def assert_no_leaks(
    before: Snapshot, after: Snapshot, *, only: Callable[[str], bool] | None = None
) -> None:
    """Fail with a list of everything left behind since `before`."""
    found = leaks(before, after, only=only)
    assert not found, "left behind: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items())
