"""Follow the control plane's destination stream for this node, for as long as the agent runs.

Each update goes into the table and the table's changes to a callback. A broken stream is
reopened with jittered exponential backoff (a fresh snapshot comes with it); meanwhile the table
keeps the last state, so enrolment and routing go on while the control plane is away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path

from nodeagent.observe.metrics import DESTINATION_CONNECTED, DESTINATION_UPDATES
from nodeagent.upstream.channel import UNARY_STREAM, CallFailed, Channel, open_stream
from nodeagent.upstream.table import DestinationTable, TableChanged
from nodemesh.api import destination_pb2 as pb
from nodemesh.version import __version__

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
SUBSCRIBE = "/nodemesh.destination.v1.Destination/Subscribe"


def read_token(path: Path, *, node: str) -> str:
    """The node's credential: a plain token file (re-read each time: projected tokens rotate)
    or the lab's tokens.json, a map of node name to token."""
    text = path.read_text().strip()
    if text.startswith("{"):
        tokens = json.loads(text)
        if node not in tokens:
            raise ValueError(f"{path} has no token for node {node!r}")
        return str(tokens[node])
    return text


class DestinationClient:
    def __init__(
        self,
        *,
        channel: Channel,
        table: DestinationTable,
        on_change: Callable[[TableChanged], None],
    ) -> None:
        self.channel = channel
        self.table = table
        self.on_change = on_change
        self.connected = False
        self.streams = 0

    async def run(self) -> None:
        """Forever: subscribe, apply updates, back off and resubscribe when the stream ends."""
        delay = BACKOFF_FIRST
        while True:
            got_snapshot = False
            try:
                async with open_stream(
                    self.channel,
                    SUBSCRIBE,
                    pb.SubscribeRequest,
                    pb.Update,
                    cardinality=UNARY_STREAM,
                ) as call:
                    await call.write(
                        pb.SubscribeRequest(node=self.table.node, agent_version=__version__)
                    )
                    self.table.stream_restarted()
                    self.streams += 1
                    async for update in call:
                        change = self.table.apply(update)
                        DESTINATION_UPDATES.labels(update.WhichOneof("kind") or "none").inc()
                        if change is None:
                            continue
                        if change.snapshot and not got_snapshot:
                            got_snapshot = True
                            self._set_connected(True)
                            delay = BACKOFF_FIRST
                        self.on_change(change)
                log.warning("destination stream ended; reconnecting")
            except CallFailed as exc:
                level = logging.WARNING if got_snapshot or self.streams <= 1 else logging.DEBUG
                log.log(level, "destination stream: %s %s", exc.code, exc.details)
            except (ValueError, OSError) as exc:
                log.error("destination stream: %s", exc)
            finally:
                self._set_connected(False)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        DESTINATION_CONNECTED.set(1 if value else 0)
