"""The agent's tap stream: AgentTap/Connect to the control plane, start/stop commands in,
request events out (the matching and rate limits are nodeagent.observe.stats.tapping's).

Events wait in a bounded queue between the sink (on the data path, never blocking) and the
stream; when the control plane reads too slowly the newest are dropped and counted. When the
stream breaks every tap ends with it: the control plane sends its taps again on the next hello.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge

from nodeagent.observe.metrics import REGISTRY
from nodeagent.observe.stats.tapping import Taps
from nodeagent.upstream.channel import CallFailed, Channel, StreamCall, open_stream
from nodeagent.upstream.reconnecting import keep_streaming
from nodemesh import tasks
from nodemesh.api import tap_pb2 as pb
from nodemesh.version import __version__

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
CONNECT = "/nodemesh.tap.v1.AgentTap/Connect"

TAP_EVENTS = Counter(
    "nodemesh_agent_tap_events",
    "Tap events by outcome (sent, dropped: the stream fell behind)",
    ["result"],
    registry=REGISTRY,
)
TAP_ACTIVE = Gauge(
    "nodemesh_agent_tap_subscriptions", "Taps active on this agent", registry=REGISTRY
)


class TapClient:
    def __init__(
        self,
        *,
        channel: Channel,
        taps: Taps,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.channel = channel
        self.taps = taps
        self.queue: asyncio.Queue[pb.TapEvent] = asyncio.Queue(queue_size)
        self.connected = False
        self.dropped = 0
        self.sent = 0
        self._commands = 0  # on the current stream: a stream that got some is not failing
        taps.emit = self._emit

    def _emit(self, event: pb.TapEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            TAP_EVENTS.labels("dropped").inc()

    async def run(self) -> None:
        async def one_stream() -> None:
            self._commands = 0
            async with open_stream(
                self.channel, CONNECT, pb.AgentTapMessage, pb.TapCommand
            ) as call:
                hello = pb.AgentHello(node=self.taps.node, agent_version=__version__)
                await call.write(pb.AgentTapMessage(hello=hello))
                self.connected = True
                await self._stream(call)
            log.warning("tap stream ended; reconnecting")

        def after() -> None:
            self.connected = False
            self.taps.clear()
            TAP_ACTIVE.set(0)
            self._drain_queue()

        # A stream that carried commands was up and working, not failing.
        await keep_streaming(
            "tap", one_stream, progressed=lambda: self._commands > 0, after=after, log=log
        )

    async def _stream(self, call: StreamCall[pb.AgentTapMessage, pb.TapCommand]) -> None:
        sender = tasks.spawn(self._send(call), name="tap events")
        try:
            async for command in call:
                self._commands += 1
                kind = command.WhichOneof("kind")
                if kind == "start":
                    self.taps.start(command.start)
                    start = command.start
                    log.info("tap %s started for %d pod(s)", start.id, len(start.pods))
                elif kind == "stop":
                    self.taps.stop(command.stop)
                    log.info("tap %s stopped", command.stop)
                TAP_ACTIVE.set(len(self.taps.subscriptions))
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def _send(self, call: StreamCall[pb.AgentTapMessage, pb.TapCommand]) -> None:
        """Send queued events until the stream breaks. A write to a broken stream ends this task
        quietly: the reading side sees the same end and reports it once (a control plane restart
        is routine, not a failed task with a traceback)."""
        while True:
            event = await self.queue.get()
            try:
                await call.write(pb.AgentTapMessage(event=event))
            except CallFailed as exc:
                log.debug("tap stream broke while sending an event: %s", exc)
                return
            self.sent += 1
            TAP_EVENTS.labels("sent").inc()

    def _drain_queue(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
