"""The tap stream's end: a control plane that goes away while events are being sent ends the
stream once (a warning from the reconnect loop), and no task logs a traceback for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from nodeagent.observe.stats.tapping import Taps
from nodeagent.upstream.channel import CallFailed
from nodeagent.upstream.tap import TapClient
from nodemesh.api import tap_pb2 as pb


def _unavailable() -> CallFailed:
    return CallFailed("UNAVAILABLE", "Connection lost")


class BrokenCall:
    """A stream whose writes fail at once and whose reads end (UNAVAILABLE) a moment later, as a
    control plane restart looks from the agent: the write sees the end first."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, message: pb.AgentTapMessage) -> None:
        self.writes += 1
        raise _unavailable()

    def __aiter__(self) -> AsyncIterator[pb.TapCommand]:
        return self._commands()

    async def _commands(self) -> AsyncIterator[pb.TapCommand]:
        await asyncio.sleep(0.05)
        raise _unavailable()
        yield pb.TapCommand()  # pragma: no cover (makes this an async generator)


def test_a_write_to_a_broken_stream_is_not_logged_as_a_failed_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taps = Taps(node="node1", emit=lambda event: None)
    client = TapClient(channel=None, taps=taps)  # type: ignore[arg-type]  # _stream is given its call
    call = BrokenCall()

    async def main() -> None:
        client._emit(pb.TapEvent())  # an event waits when the stream breaks
        with pytest.raises(CallFailed) as raised:
            await client._stream(call)  # type: ignore[arg-type]
        assert raised.value.code == "UNAVAILABLE"
        await asyncio.sleep(0.05)  # the sender task's done callbacks have run

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert call.writes == 1
    assert client.sent == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
