"""Run a pod's rule work (nat, filter, ip6 filter, transparent return) for the agent's event
loop on one dedicated thread.

setns(2) and libiptc block and change the calling thread's namespace, so they never run on the
loop thread. One thread does all of it, one job after another: a netns's rule work is serial,
and python-iptables' process-wide Table cache is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

from nodeagent.rules import transparent
from nodeagent.rules.apply import apply_plan, inspect_rules, remove_rules
from nodeagent.rules.diff import RuleDiff, diff_plan
from nodeagent.rules.model import TABLE, NatPlan, NatState, PodPlan

T = TypeVar("T")


TRANSPARENT = transparent.TransparentPlan()
# Every table a pod plan may write, so removal covers what any plan (of any version) wrote.
TABLES = (("nat", 4), ("filter", 4), ("filter", 6))


def _ipv6_enabled() -> bool:
    # Booted with ipv6.disable=1 the kernel has no IPv6 at all (and no ip6 tables to write):
    # nothing to hold closed. Checked per job; it cannot change without a reboot.
    return os.path.isdir("/proc/sys/net/ipv6")


def _tables(plan: PodPlan) -> list[NatPlan]:
    return [p for p in plan.tables() if p.family == 4 or _ipv6_enabled()]


def _merge(diffs: list[tuple[str, RuleDiff]], other: list[str]) -> RuleDiff:
    """One diff for the whole pod; differences outside the nat table are named by table."""
    nat = next(d for where, d in diffs if where == TABLE)
    lines = []
    for where, d in diffs:
        if where != TABLE:
            lines += [f"{where}: {line}" for line in d.describe()]
    lines += other
    return dataclasses.replace(nat, other=tuple(lines)) if lines else nat


def _apply_all(netns: str, plan: PodPlan) -> RuleDiff:
    diffs = [(p.where, apply_plan(netns, p)) for p in _tables(plan)]
    return _merge(diffs, transparent.apply(netns, TRANSPARENT))


def _remove_all(netns: str) -> NatState:
    removed = remove_rules(netns)
    for table, family in TABLES[1:]:
        if family == 4 or _ipv6_enabled():
            remove_rules(netns, table=table, family=family)
    transparent.remove(netns, TRANSPARENT)
    return removed


def _check_all(netns: str, plan: PodPlan) -> RuleDiff:
    diffs = [
        (p.where, diff_plan(p, inspect_rules(netns, table=p.table, family=p.family)))
        for p in _tables(plan)
    ]
    return _merge(diffs, transparent.problems(netns, TRANSPARENT))


class RuleWorker:
    """`await worker.apply(netns, plan)`, `remove(netns)`, `inspect(netns)`, `check(...)`.

    A cancelled await does not stop a job already running on the thread: each job ends in one
    commit (or none), so it either fully happens or not at all.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodemesh-rules")
        self._closed = False

    async def _run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        if self._closed:
            raise RuntimeError("RuleWorker is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def apply(self, netns: str, plan: PodPlan) -> RuleDiff:
        """Install or repair `plan` (every table, and the transparent-return rules) in `netns`;
        returns what differed before (empty: nothing)."""
        return await self._run(_apply_all, netns, plan)

    async def remove(self, netns: str) -> NatState:
        """Remove every nodemesh chain, jump and route from `netns`; returns the nat part."""
        return await self._run(_remove_all, netns)

    async def inspect(
        self, netns: str, *, everything: bool = False, table: str = TABLE, family: int = 4
    ) -> NatState:
        return await self._run(
            inspect_rules, netns, everything=everything, table=table, family=family
        )

    async def check(self, netns: str, plan: PodPlan) -> RuleDiff:
        """Compare without changing anything (for CNI CHECK and the agent's start-up pass)."""
        return await self._run(_check_all, netns, plan)

    async def aclose(self) -> None:
        """Let queued jobs finish, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        # Waiting for a no-op queued behind every job means shutdown() below will not block.
        await asyncio.get_running_loop().run_in_executor(self._pool, lambda: None)
        self._pool.shutdown(wait=True)

    async def __aenter__(self) -> RuleWorker:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
