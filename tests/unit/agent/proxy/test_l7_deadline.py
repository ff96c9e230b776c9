"""Deadlines: a task's successive waits bounded on one timer, on asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from nodeagent.proxy.l7.deadline import Deadlines

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOPS))
def on_loop(request: pytest.FixtureRequest):
    def run(main: Callable[[], Awaitable[Any]]) -> Any:
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    return run


async def _wait(deadlines: Deadlines, timeout: float, awaitable: Awaitable[Any]) -> Any:
    deadlines.start(timeout)
    try:
        return await awaitable
    except asyncio.CancelledError:
        deadlines.check()
        raise
    finally:
        deadlines.stop()


def test_a_wait_past_its_deadline_raises_timeout_and_one_in_time_returns(on_loop) -> None:
    async def main() -> tuple[float, Any]:
        d = Deadlines()
        assert await _wait(d, 1.0, asyncio.sleep(0.01, "done")) == "done"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await _wait(d, 0.1, asyncio.sleep(5))
        took = time.monotonic() - started
        # The task is usable afterwards: not left cancelled.
        after = await asyncio.sleep(0.01, "still running")
        d.close()
        return took, after

    took, after = on_loop(main)
    assert 0.09 <= took < 2.0
    assert after == "still running"


def test_successive_waits_with_the_same_timeout_make_one_timer(on_loop) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        made = 0
        call_at = loop.call_at

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal made
            made += 1
            return call_at(*args, **kwargs)

        loop.call_at = counting  # type: ignore[method-assign]
        d = Deadlines()
        for _ in range(200):
            await _wait(d, 60.0, asyncio.sleep(0))
        d.close()
        return made

    assert on_loop(main) == 1


def test_a_shorter_deadline_after_a_longer_one_still_fires_on_time(on_loop) -> None:
    async def main() -> float:
        d = Deadlines()
        await _wait(d, 60.0, asyncio.sleep(0))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await _wait(d, 0.1, asyncio.sleep(5))
        d.close()
        return time.monotonic() - started

    assert 0.09 <= on_loop(main) < 2.0


def test_the_timer_moves_to_a_later_wait_instead_of_ending_it_early(on_loop) -> None:
    """The timer was set for a first wait's 0.1 s; a second wait, begun after the first ended,
    has 0.4 s: the timer firing at 0.1 s must not end it, only its own deadline does."""

    async def main() -> tuple[Any, float]:
        d = Deadlines()
        await _wait(d, 0.1, asyncio.sleep(0))
        started = time.monotonic()
        done = await _wait(d, 0.4, asyncio.sleep(0.25, "in time"))
        with pytest.raises(TimeoutError):
            await _wait(d, 0.4, asyncio.sleep(5))
        d.close()
        return done, time.monotonic() - started

    done, took = on_loop(main)
    assert done == "in time"
    assert 0.6 <= took < 3.0  # 0.25 s, then a whole 0.4 s wait


def test_a_cancel_from_outside_stays_a_cancel(on_loop) -> None:
    async def main() -> str:
        async def waiter() -> None:
            d = Deadlines()
            try:
                await _wait(d, 5.0, asyncio.sleep(5))
            finally:
                d.close()

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "timeout"
        return "returned"

    assert on_loop(main) == "cancelled"


def test_a_timer_firing_between_waits_cancels_nothing(on_loop) -> None:
    async def main() -> str:
        d = Deadlines()
        await _wait(d, 0.05, asyncio.sleep(0))
        await asyncio.sleep(0.2)  # the timer fires with no wait under way
        result = await asyncio.sleep(0.01, "not cancelled")
        assert d.handle is None  # it lapsed: nothing keeps the task alive
        d.close()
        return result

    assert on_loop(main) == "not cancelled"


def test_close_cancels_the_timer(on_loop) -> None:
    async def main() -> bool:
        d = Deadlines()
        await _wait(d, 60.0, asyncio.sleep(0))
        handle = d.handle
        assert handle is not None
        d.close()
        return handle.cancelled() and d.handle is None

    assert on_loop(main)
