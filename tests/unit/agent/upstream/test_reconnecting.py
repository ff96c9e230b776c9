"""The agent's reconnecting-stream loop: every end is cleaned up after, the wait grows while
streams fail and starts over short after one that worked, and the delays stay what the tap and
telemetry clients used before they shared it (0.25 s doubling to 10 s, from each one's upper
half)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nodeagent.upstream import reconnecting
from nodeagent.upstream.reconnecting import agent_backoff, keep_streaming


class Stop(BaseException):
    pass


async def test_waits_grow_on_failures_and_start_over_after_a_working_stream(monkeypatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 6:
            raise Stop

    monkeypatch.setattr(reconnecting.asyncio, "sleep", sleep)
    outcomes = iter([OSError("refused"), OSError("refused"), OSError("refused"), None,
                     OSError("refused"), OSError("refused")])  # fmt: skip
    worked = [False]
    cleanups = []

    async def stream() -> None:
        outcome = next(outcomes)
        worked[0] = outcome is None
        if outcome is not None:
            raise outcome

    with pytest.raises(Stop):
        await keep_streaming("test", stream, progressed=lambda: worked[0],
                             after=lambda: cleanups.append(1), log=logging.getLogger("t"))  # fmt: skip
    assert len(cleanups) == 6
    # After the working stream the wait starts over and grows again from there.
    bounds = [(0.125, 0.25), (0.25, 0.5), (0.5, 1.0), (0.125, 0.25), (0.25, 0.5), (0.5, 1.0)]
    for wait, (low, high) in zip(waits, bounds, strict=True):
        assert low - 1e-9 <= wait <= high + 1e-9, (waits, bounds)


def test_the_delays_are_the_clients_former_ones() -> None:
    backoff = agent_backoff()
    for step in range(12):
        d = min(0.25 * 2**step, 10.0)
        assert d / 2 - 1e-9 <= backoff.delay() <= d + 1e-9, step


async def test_unexpected_errors_are_not_swallowed() -> None:
    async def stream() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await asyncio.wait_for(
            keep_streaming(
                "test",
                stream,
                progressed=lambda: False,
                after=lambda: None,
                log=logging.getLogger("t"),
            ),  # fmt: skip
            5,
        )
