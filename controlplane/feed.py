"""Drive the index from a source and hand each batch of changes to the services that follow it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from controlplane.index import Change, ClusterIndex
from controlplane.sources.events import Source

log = logging.getLogger(__name__)

Listener = Callable[[list[Change], int], None]


class Feed:
    def __init__(self, source: Source, index: ClusterIndex, listeners: list[Listener]) -> None:
        self.source = source
        self.index = index
        self.listeners = listeners

    async def run(self) -> None:
        """Forever: one source event in, the resulting changes out to every listener."""
        async for event in self.source.events():
            changes = self.index.apply(event)
            if not changes:
                continue
            for listener in self.listeners:
                try:
                    listener(changes, self.index.revision)
                except Exception:
                    # One broken consumer must not stop the index for the others.
                    log.exception("change listener %r failed", listener)
