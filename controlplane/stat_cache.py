"""Stat answers kept and rebuilt in the background while someone asks for them.

A Stat over 10,000 pods costs ~0.2-0.3 s of work (the store's query, three quantiles and a
protobuf row a resource, all in the telemetry worker since the seventh round: controlplane.
stat_answer): a caller who waits for all of it waits that long and more on a busy machine
(bench/results/controlplane-scale.md). Here each distinct question (`key`) keeps its
last answer, and the answer is rebuilt once a second, in the background, for as long as the
question was asked within `keep_s`; a caller gets the held answer at once.

Freshness, which the public API states (docs/cli.md): a build starts each `refresh_s` (1 s)
while the question is asked (or, when a build takes longer than half of that, as long after it
ended as it took: builds take at most half the time), and a call gets the latest finished
build, which holds the reports and index changes made before that build began: about a second
old, plus the time one build takes (~0.3 s at 10,000 pods on an idle core; more on a busy one,
where a caller who waited for a build of its own would wait as long). An answer finished more
than `max_age_s` (2 s) ago is not given: the call waits for the build in flight (a store that
stopped answering is not hidden for longer than that). A question nobody asked within `keep_s`
(10 s) is forgotten, and its next call waits for its build, as without the cache. A build that
fails (a bad query, Prometheus down) is the caller's error and is not kept.

Built ahead (`warm`): a question nobody asked yet can be kept for a while as if asked, so the
first call finds an answer (the control plane does this for Stat pod and Stat deployment over
all namespaces for a few minutes after it starts: controlplane.public_api.build_ahead). Such an
answer follows the same freshness rules (at most max_age_s old, else the call waits for the
build in flight), and is rebuilt only as often as that needs: each build begins so that it ends
before the last answer is max_age_s old (about every 1.5 s at 10,000 pods rather than each
second), never sooner than a refresh of an asked question would. A caller's first call ends the
warm period: from then on the question is kept while asked, as any other.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nodemesh import tasks

T = TypeVar("T")


@dataclass(eq=False)
class _Held(Generic[T]):
    build: Callable[[], Awaitable[T]]
    asked: float
    started: float = 0.0  # when the held answer's build began
    ready: float = 0.0  # when it finished
    answer: T | None = None
    building: asyncio.Future[T] | None = field(default=None, repr=False)
    refresher: asyncio.Task[None] | None = field(default=None, repr=False)
    warm_until: float = 0.0  # built ahead (not asked) until then


class StatCache(Generic[T]):
    def __init__(
        self,
        *,
        refresh_s: float = 1.0,
        max_age_s: float = 2.0,
        keep_s: float = 10.0,
        max_keys: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < refresh_s <= max_age_s:
            raise ValueError("refresh_s must be positive and at most max_age_s")
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.keep_s = keep_s
        self.max_keys = max_keys
        self.clock = clock
        self._held: dict[Hashable, _Held[T]] = {}
        self.builds = self.hits = 0

    async def get(self, key: Hashable, build: Callable[[], Awaitable[T]]) -> T:
        """The held answer to `key` if it was built at most max_age_s ago; else a new one from
        `build` (shared with any build of it already running). Keeps it fresh while asked."""
        now = self.clock()
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(build, asked=now)
            self._forget_oldest()
        held.asked = now
        held.warm_until = 0.0  # asked: kept while asked from now on, as any question
        if held.answer is not None and now - held.ready <= self.max_age_s:
            self.hits += 1
            return held.answer
        try:
            return await asyncio.shield(self._build(key, held))
        except BaseException:
            if held.answer is None and self._held.get(key) is held:
                self._drop(key)
            raise

    def warm(self, key: Hashable, build: Callable[[], Awaitable[T]], seconds: float) -> None:
        """Build `key` now and keep an answer to it at most max_age_s old for `seconds`, or
        until a caller asks it (then as any question asked). A failed build ends it."""
        now = self.clock()
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = _Held(build, asked=-math.inf)
            self._forget_oldest()
        if now - held.asked <= self.keep_s:
            return  # asked: kept anyway
        held.warm_until = max(held.warm_until, now + seconds)
        if held.refresher is None and held.building is None:
            tasks.spawn(self._first_warm(key, held), name="stat-cache build ahead")

    async def _first_warm(self, key: Hashable, held: _Held[T]) -> None:
        try:
            await asyncio.shield(self._build(key, held))
        except Exception:  # noqa: BLE001 (nobody waits for it: a caller builds again)
            if held.answer is None and self._held.get(key) is held:
                self._drop(key)

    def _build(self, key: Hashable, held: _Held[T]) -> asyncio.Future[T]:
        if held.building is None:
            held.building = asyncio.ensure_future(self._run(key, held))
        return held.building

    async def _run(self, key: Hashable, held: _Held[T]) -> T:
        started = self.clock()
        self.builds += 1
        try:
            answer = await held.build()
        finally:
            held.building = None
        held.started, held.ready, held.answer = started, self.clock(), answer
        if held.refresher is None and self._held.get(key) is held:
            held.refresher = tasks.spawn(self._refresh(key, held), name="stat-cache refresh")
        return answer

    async def _refresh(self, key: Hashable, held: _Held[T]) -> None:
        while True:
            # The next build begins refresh_s after the last began, and no sooner after it ended
            # than it took: on a loaded machine a build of 10,000 rows takes most of a second,
            # and builds back to back took the CPU the agents' streams needed (pod changes
            # reached 150 agents in 2.1-5.7 s at the median with Stat asked each second, 0.4 s
            # without: bench/results/controlplane-scale.md, fifth round).
            took = held.ready - held.started
            now = self.clock()
            wait = max(0.0, held.started + self.refresh_s - now, held.ready + took - now)
            if now - held.asked > self.keep_s:
                # Built ahead, not asked: begin so as to end (taking twice as long as the last
                # build, a tenth of max_age_s to spare) before the held answer is too old.
                wait = max(wait, held.ready + 0.9 * self.max_age_s - 2 * took - now)
            await asyncio.sleep(wait)
            now = self.clock()
            if self._held.get(key) is not held or (
                now - held.asked > self.keep_s and now >= held.warm_until
            ):
                break
            try:
                await asyncio.shield(self._build(key, held))
            except Exception:  # noqa: BLE001 (the next caller builds again and gets the error)
                break
        held.refresher = None
        if self._held.get(key) is held:
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        held = self._held.pop(key)
        if held.refresher is not None and held.refresher is not asyncio.current_task():
            held.refresher.cancel()

    def _forget_oldest(self) -> None:
        while len(self._held) > self.max_keys:
            self._drop(min(self._held, key=lambda k: self._held[k].asked))

    def close(self) -> None:
        for key in list(self._held):
            self._drop(key)
