"""Short-lived answers shared between concurrent page loads (one control-plane call per key/TTL).

Many browsers refreshing the same table every second would otherwise each cost the control
plane a query; `Coalescer.get(key, fetch)` runs `fetch` once per key and TTL, and callers that
arrive while it runs await the same result. Failures are not kept: the next caller retries.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from nodemesh import tasks


class Coalescer:
    def __init__(
        self,
        *,
        ttl: float = 1.0,
        max_keys: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, asyncio.Task[Any]]] = OrderedDict()
        self.fetches = 0  # calls that reached the control plane (tests read it)

    async def get(self, key: Hashable, fetch: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        now = self.clock()
        entry = self._entries.get(key)
        if entry is None or (entry[1].done() and now - entry[0] >= self.ttl):
            # The fetch runs as its own task: a caller that goes away (a closed browser tab)
            # must not cancel the answer other callers are waiting for.
            task = tasks.spawn(_outcome(fetch), name=f"dashboard-fetch-{key}")
            task.add_done_callback(lambda t: self._forget_failed(key, t))
            entry = self._entries[key] = (now, task)
            self._entries.move_to_end(key)
            self.fetches += 1
            self._trim()
        answered, value = await asyncio.shield(entry[1])
        if not answered:
            raise value
        return value

    def _forget_failed(self, key: Hashable, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result()[0]:
            if self._entries.get(key, (0.0, None))[1] is task:
                del self._entries[key]

    def _trim(self) -> None:
        # Keys come from validated user input (namespaces, windows) but are unbounded in
        # principle: drop the oldest settled entries past the bound.
        for key in list(self._entries):
            if len(self._entries) <= self.max_keys:
                return
            if self._entries[key][1].done():
                del self._entries[key]


async def _outcome(fetch: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[bool, Any]:
    """The answer or the exception, as a value: a failed fetch (a control plane not up yet) is
    the waiting callers' to handle and report, not a task failure to log with a traceback."""
    try:
        return True, await fetch()
    except Exception as exc:  # noqa: BLE001 (handed to every caller, re-raised there)
        return False, exc
