"""Sockets made ahead inside one pod's netns, so a connection takes one on the event loop.

Making a socket in a pod's netns is a setns round trip on an executor thread (nodemesh.netns):
per connection that is a thread hand-off, two setns calls and a future, on the hot path. A
stock is filled in batches on the executor after a pod's first connection of that kind (an idle
pod holds none), refilled when it runs low, and closed with the pod's listeners (its sockets
hold the netns). `take()` answers None when the stock is empty: the caller makes one as before.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from concurrent.futures import Executor

BATCH = 8
LOW = 2


class SocketStock:
    def __init__(
        self,
        make: Callable[[], socket.socket],
        *,
        executor: Executor,
        batch: int = BATCH,
        low: int = LOW,
    ) -> None:
        self._make, self._executor = make, executor
        self.batch, self.low = batch, low
        self._stock: list[socket.socket] = []
        self._refilling = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._stock)

    def take(self) -> socket.socket | None:
        sock = self._stock.pop() if self._stock else None
        if len(self._stock) < self.low and not self._refilling and not self.closed:
            self._refilling = True
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._make_batch)
            future.add_done_callback(self._filled)
        return sock

    def _make_batch(self) -> list[socket.socket]:
        made: list[socket.socket] = []
        try:
            for _ in range(self.batch):
                made.append(self._make())
        except OSError:
            pass  # the pod's netns went away (or cannot take this kind): what was made is kept
        return made

    def _filled(self, future: asyncio.Future[list[socket.socket]]) -> None:
        self._refilling = False
        if future.cancelled() or future.exception() is not None:
            return
        made = future.result()
        if self.closed:
            for sock in made:
                sock.close()
            return
        self._stock.extend(made)

    def close(self) -> None:
        self.closed = True
        stock, self._stock = self._stock, []
        for sock in stock:
            sock.close()
