"""Drive the index from a source and hand each batch of changes to the services that follow it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controlplane.index import Change, ClusterIndex
from controlplane.sources.events import Source, SourceEvent
from nodemesh import tasks

log = logging.getLogger(__name__)

Listener = Callable[[list[Change], int], None]


class Feed:
    def __init__(self, source: Source, index: ClusterIndex, listeners: list[Listener]) -> None:
        self.source = source
        self.index = index
        self.listeners = listeners

    async def run(self) -> None:
        """Forever: the source's events into the index; each batch of changes out to every
        listener. A batch is every event the source has ready at once (a poll's findings, a
        burst of watch events), so 50 pod changes a second reach each agent as a few deltas,
        not 100 messages (one per pod, one per EndpointSlice)."""
        ready: asyncio.Queue[SourceEvent | None] = asyncio.Queue()

        async def pull() -> None:
            try:
                async for event in self.source.events():
                    ready.put_nowait(event)
            finally:
                ready.put_nowait(None)

        puller = tasks.spawn(pull(), name="feed source")
        try:
            while True:
                event = await ready.get()
                batch = [event]
                while not ready.empty() and batch[-1] is not None:
                    batch.append(ready.get_nowait())
                changes: list[Change] = []
                for e in batch:
                    if e is not None:
                        changes.extend(self.index.apply(e))
                self._tell(changes)
                if batch[-1] is None:  # the source ended (or failed: then say how)
                    await asyncio.wait({puller})
                    if not puller.cancelled() and (exc := puller.exception()) is not None:
                        raise exc
                    return
        finally:
            await tasks.cancel_all([puller])

    def _tell(self, changes: list[Change]) -> None:
        if changes:
            for listener in self.listeners:
                try:
                    listener(changes, self.index.revision)
                except Exception:
                    # One broken consumer must not stop the index for the others.
                    log.exception("change listener %r failed", listener)
