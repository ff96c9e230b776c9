"""The telemetry stream's end: the reconnect loop reports it once (a warning), no task logs a
traceback for it (a control plane restart is routine, not an error in the agent)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from nodeagent.observe.stats.series import Aggregate
from nodeagent.upstream.channel import CallFailed
from nodeagent.upstream.telemetry import TelemetryClient
from nodemesh.api import telemetry_pb2 as pb


class BrokenCall:
    """A stream the control plane ends (UNAVAILABLE) before acknowledging anything."""

    def __init__(self) -> None:
        self.written: list[pb.AgentReport] = []

    async def write(self, report: pb.AgentReport) -> None:
        self.written.append(report)

    def __aiter__(self) -> AsyncIterator[pb.ReportAck]:
        return self._acks()

    async def _acks(self) -> AsyncIterator[pb.ReportAck]:
        await asyncio.sleep(0.01)
        raise CallFailed("UNAVAILABLE", "Stream reset by remote party, error_code: 0")
        yield pb.ReportAck()  # pragma: no cover (makes this an async generator)


def test_a_broken_stream_is_raised_to_the_reconnect_loop_not_logged_as_a_failed_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = TelemetryClient(
        channel=None,  # type: ignore[arg-type]  # _stream is given its call
        aggregate=Aggregate(),
        node="node1",
        pods_enrolled=lambda: 0,
        interval=0.01,
    )
    call = BrokenCall()

    async def main() -> None:
        with pytest.raises(CallFailed) as raised:
            await client._stream(call)  # type: ignore[arg-type]
        assert raised.value.code == "UNAVAILABLE"
        await asyncio.sleep(0.05)  # done callbacks of the ack task have run

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert len(call.written) == 1  # the first report went out before the stream broke
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
