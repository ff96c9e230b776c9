"""What each import costs the agent in memory: RSS added while each top-level package's modules
ran (a meta-path hook around every module's execution, children charged to their own package),
and the agent's resident mappings by file when a PID is given.

    .venv/bin/python bench/agent_imports.py [--pid AGENT_PID] [--top 15]

Without --pid it imports what the agent imports (nodeagent.agent, nodeagent.main) in this
process. RSS counts the pages of shared libraries the process touched, as the benchmark's
"agent RSS" figure does.
"""

from __future__ import annotations

import argparse
import collections
import importlib.abc
import importlib.machinery
import sys
from pathlib import Path
from typing import Any


def rss_kb(pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Charge(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.own: collections.Counter[str] = collections.Counter()
        self.stack: list[list[Any]] = []

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None  # let the other finders (builtins, frozen) do it, uncharged
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            self.stack.append([name.split(".")[0], rss_kb(), 0])
            try:
                run(module)
            finally:
                top, start, children = self.stack.pop()
                spent = rss_kb() - start
                self.own[top] += spent - children
                if self.stack:
                    self.stack[-1][2] += spent

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def by_import(top: int) -> None:
    hook = _Charge()
    sys.meta_path.insert(0, hook)
    before = rss_kb()
    import nodeagent.agent  # noqa: F401
    import nodeagent.main  # noqa: F401

    sys.meta_path.remove(hook)
    print(f"imports: {(rss_kb() - before) / 1024:.1f} MB added, RSS {rss_kb() / 1024:.1f} MB, "
          f"{len(sys.modules)} modules")  # fmt: skip
    for name, kb in hook.own.most_common(top):
        print(f"  {name:24} {kb / 1024:6.1f} MB")


def by_mapping(pid: str, top: int) -> None:
    sizes: collections.Counter[str] = collections.Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            name = head[5] if len(head) > 5 else "[anonymous]"
        elif head[0] == "Rss:":
            sizes[name] += int(head[1])
    print(f"pid {pid}: RSS {rss_kb(pid) / 1024:.1f} MB")
    for mapping, kb in sizes.most_common(top):
        print(f"  {kb / 1024:6.1f} MB  {mapping}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pid", help="a running agent's PID: its resident mappings by file")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    if args.pid:
        by_mapping(args.pid, args.top)
    else:
        by_import(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
