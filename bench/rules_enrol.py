"""Time the rules part of enrolling a pod: RuleWorker.apply on a fresh pod netns (the default
plan: nat, ip6 filter and the transparent-return mangle rules and route), apply again (in sync),
check, remove; and count the processes each runs.

Run as root: .venv/bin/python bench/rules_enrol.py [--pods 10]
To compare with another tree, run it with PYTHONPATH=<that tree>. Makes N empty netns
(nmrulesbench-<hex>-<i>) and deletes them afterwards, also on failure. Results:
bench/results/rules_enrol.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

from nodeagent.rules import RedirectSettings, build_pod_plan
from nodeagent.rules.worker import RuleWorker

STEPS = ("apply", "reapply", "check", "remove")


async def measure(names: list[str]) -> None:
    plan = build_pod_plan(RedirectSettings())
    took: dict[str, list[float]] = {step: [] for step in STEPS}
    runs: collections.Counter[str] = collections.Counter()
    real_run = subprocess.run
    async with RuleWorker() as worker:
        for ns in names:
            jobs: dict[str, Callable[[], Awaitable[object]]] = {
                "apply": lambda ns=ns: worker.apply(ns, plan),
                "reapply": lambda ns=ns: worker.apply(ns, plan),
                "check": lambda ns=ns: worker.check(ns, plan),
                "remove": lambda ns=ns: worker.remove(ns),
            }
            for step in STEPS:

                def counted(*args: object, _step: str = step, **kwargs: object) -> object:
                    runs[_step] += 1
                    return real_run(*args, **kwargs)  # type: ignore[call-overload]

                subprocess.run = counted  # type: ignore[assignment]
                started = time.perf_counter()
                try:
                    await jobs[step]()
                finally:
                    subprocess.run = real_run
                took[step].append((time.perf_counter() - started) * 1000)
    for step, ms in took.items():
        print(
            f"{step:8} median {statistics.median(ms):6.1f} ms  min {min(ms):6.1f}  "
            f"max {max(ms):6.1f}  processes {runs[step] / len(names):.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=10)
    args = parser.parse_args()
    tag = secrets.token_hex(3)
    names = [f"nmrulesbench-{tag}-{i}" for i in range(args.pods)]
    made = []
    try:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        asyncio.run(measure(names))
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
