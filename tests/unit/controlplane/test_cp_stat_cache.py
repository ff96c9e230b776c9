"""The public API's kept Stat answers (controlplane.stat_cache): callers asking at once share one
build, an answer is rebuilt each second while asked and never given once too old, and a failed
build is its caller's error, not a kept answer."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.stat_cache import StatCache


class Store:
    """Stands in for the telemetry store: each build reads `requests` and can be held."""

    def __init__(self) -> None:
        self.requests = 0
        self.builds = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def build(self) -> int:
        self.builds += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.requests


async def test_callers_share_one_build_and_get_the_kept_answer() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.2, max_age_s=0.5, keep_s=5)
    store = Store()
    store.gate.clear()
    store.requests = 7
    first = [asyncio.ensure_future(cache.get("pods", store.build)) for _ in range(5)]
    await asyncio.sleep(0.01)
    store.gate.set()
    assert await asyncio.gather(*first) == [7] * 5
    assert store.builds == 1
    store.requests = 9
    assert await cache.get("pods", store.build) == 7  # kept, not rebuilt for each call
    assert store.builds == 1
    cache.close()


async def test_new_traffic_shows_within_a_refresh_and_a_stuck_store_is_not_hidden() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.2, max_age_s=1.0, keep_s=5)
    store = Store()
    assert await cache.get("pods", store.build) == 0
    store.requests = 3
    await asyncio.sleep(0.5)  # a refresh has run
    assert await cache.get("pods", store.build) == 3
    store.gate.clear()  # the store stops answering
    assert await asyncio.wait_for(cache.get("pods", store.build), 0.5) == 3
    await asyncio.sleep(1.2)  # the kept answer is now older than max_age_s
    late = asyncio.ensure_future(cache.get("pods", store.build))
    await asyncio.sleep(0.05)
    assert not late.done()
    store.requests = 4
    store.gate.set()
    assert await late == 4
    cache.close()


async def test_a_failed_build_is_the_callers_error_and_is_not_kept() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.2, max_age_s=0.5, keep_s=5)
    store = Store()
    store.fail = ValueError("bad window")
    with pytest.raises(ValueError, match="bad window"):
        await cache.get("pods", store.build)
    store.fail = None
    store.requests = 2
    assert await cache.get("pods", store.build) == 2
    cache.close()


async def test_a_question_nobody_asks_stops_being_rebuilt() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.05, max_age_s=0.1, keep_s=0.2)
    store = Store()
    await cache.get("pods", store.build)
    await asyncio.sleep(0.5)
    settled = store.builds
    await asyncio.sleep(0.3)
    assert store.builds == settled <= 6
    cache.close()


async def test_a_slow_build_is_not_run_back_to_back() -> None:
    # On a loaded machine a build of 10,000 rows takes most of a second: rebuilt back to back,
    # it took the CPU the agents' streams needed. Builds take at most half the time.
    cache: StatCache[int] = StatCache(refresh_s=0.1, max_age_s=2.0, keep_s=5)
    store = Store()

    async def slow() -> int:
        await asyncio.sleep(0.2)
        return await store.build()

    await cache.get("pods", slow)
    await asyncio.sleep(1.2)
    assert store.builds <= 4  # back to back: 6 or 7
    assert await cache.get("pods", slow) == 0  # still kept and given at once
    cache.close()
