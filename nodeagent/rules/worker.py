"""Run a pod's rule work (nat, filter, ip6 filter, the transparent-return mangle rules and
route) for the agent's event loop on one dedicated thread.

Every table goes through one path (`apply.sync`): per address family one save, and when anything
differs one `ip[6]tables-legacy-restore` transaction holding every table of that family (IPv4:
nat, filter, mangle; IPv6: filter). The tools block, so they never run on the loop thread; one
thread runs every job, one after another, so a netns's rule work is serial.
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
from nodeagent.rules.apply import inspect_rules, sync
from nodeagent.rules.diff import RuleDiff
from nodeagent.rules.model import TABLE, NatPlan, NatState, PodPlan
from nodeagent.rules.restore import Transaction, empty_plan

T = TypeVar("T")


TRANSPARENT = transparent.TransparentPlan()
# Every table nodemesh may write, so removal covers what any plan (of any version) wrote.
TABLES = (("nat", 4), ("filter", 4), ("mangle", 4), ("filter", 6))


def _ipv6_enabled() -> bool:
    # Booted with ipv6.disable=1 the kernel has no IPv6 at all (and no ip6 tables to write):
    # nothing to hold closed. Checked per job; it cannot change without a reboot.
    return os.path.isdir("/proc/sys/net/ipv6")


def _tables(plan: PodPlan) -> list[NatPlan]:
    """The pod's tables and the transparent-return mangle table, IPv6 only where there is any."""
    tables = [*plan.tables(), TRANSPARENT.mangle_plan()]
    return [p for p in tables if p.family == 4 or _ipv6_enabled()]


def _merge(transactions: list[Transaction], other: list[str]) -> RuleDiff:
    """One diff for the whole pod; differences outside the nat table are named by table."""
    diffs = [(plan.where, diff) for t in transactions for plan, diff in t.diffs]
    nat = next(d for where, d in diffs if where == TABLE)
    lines = []
    for where, d in diffs:
        if where != TABLE:
            lines += [f"{where}: {line}" for line in d.describe()]
    lines += other
    return dataclasses.replace(nat, other=tuple(lines)) if lines else nat


def _apply_all(netns: str, plan: PodPlan) -> RuleDiff:
    transactions = sync(netns, _tables(plan))
    return _merge(transactions, transparent.apply_routes(netns, TRANSPARENT))


def _remove_all(netns: str) -> NatState:
    plans = [empty_plan(t, f) for t, f in TABLES if f == 4 or _ipv6_enabled()]
    transactions = sync(netns, plans)
    transparent.remove_routes(netns, TRANSPARENT)
    return transactions[0].observed.get(TABLE, NatState({})).owned()


def _check_all(netns: str, plan: PodPlan) -> RuleDiff:
    transactions = sync(netns, _tables(plan), simulate=True)
    return _merge(transactions, transparent.route_problems(netns, TRANSPARENT))


def _simulate(netns: str, plan: PodPlan) -> str:
    return "".join(t.describe() for t in sync(netns, _tables(plan), simulate=True))


class RuleWorker:
    """`await worker.apply(netns, plan)`, `remove(netns)`, `inspect(netns)`, `check(...)`.

    A cancelled await does not stop a job already running on the thread: each family's tables
    change in one restore transaction (or none), so a table is never left half written.
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

    async def simulate(self, netns: str, plan: PodPlan) -> str:
        """What `apply` would write to `netns` now: each family's restore text, headed by its
        command (or saying there is nothing to write). Writes nothing."""
        return await self._run(_simulate, netns, plan)

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
