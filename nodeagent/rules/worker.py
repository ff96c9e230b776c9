"""Run nat rule work for the agent's event loop on one dedicated thread.

setns(2) and libiptc block and change the calling thread's namespace, so they never run on the
loop thread. One thread does all of it, one job after another: a netns's rule work is serial,
and python-iptables' process-wide Table cache is never used from two threads at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

from nodeagent.rules import transparent
from nodeagent.rules.apply import apply_plan, inspect_rules, remove_rules
from nodeagent.rules.diff import RuleDiff, diff_plan
from nodeagent.rules.model import NatPlan, NatState

T = TypeVar("T")


TRANSPARENT = transparent.TransparentPlan()


def _apply_both(netns: str, plan: NatPlan) -> RuleDiff:
    diff = apply_plan(netns, plan)
    other = transparent.apply(netns, TRANSPARENT)
    return dataclasses.replace(diff, other=tuple(other)) if other else diff


def _remove_both(netns: str) -> NatState:
    removed = remove_rules(netns)
    transparent.remove(netns, TRANSPARENT)
    return removed


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

    async def apply(self, netns: str, plan: NatPlan) -> RuleDiff:
        """Install or repair `plan` (and the transparent-return rules) in `netns`; returns what
        differed before (empty: nothing)."""
        return await self._run(_apply_both, netns, plan)

    async def remove(self, netns: str) -> NatState:
        """Remove every nodemesh chain, jump and route from `netns`; returns the nat part."""
        return await self._run(_remove_both, netns)

    async def inspect(self, netns: str, *, everything: bool = False) -> NatState:
        return await self._run(inspect_rules, netns, everything=everything)

    async def check(self, netns: str, plan: NatPlan) -> RuleDiff:
        """Compare without changing anything (for CNI CHECK and the agent's start-up pass)."""
        diff = diff_plan(plan, await self.inspect(netns))
        other = await self._run(transparent.problems, netns, TRANSPARENT)
        return dataclasses.replace(diff, other=tuple(other)) if other else diff

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
