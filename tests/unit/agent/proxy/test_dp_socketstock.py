"""Sockets made ahead in a pod's netns (issue 17: no setns on the hot path): the stock starts
empty (an idle pod holds nothing), fills in batches on the executor after the first take,
hands them out without the executor, and closes what it holds, and what arrives late, with
the pod."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

from nodeagent.proxy.socketstock import SocketStock


async def test_the_stock_fills_after_first_use_and_hands_out_without_the_executor() -> None:
    made: list[socket.socket] = []

    def make() -> socket.socket:
        s = socket.socket()
        made.append(s)
        return s

    with ThreadPoolExecutor(1) as pool:
        stock = SocketStock(make, executor=pool, batch=4, low=2)
        assert made == [] and len(stock) == 0  # nothing made ahead for an idle pod
        assert stock.take() is None  # the first connection makes its own; a batch starts
        for _ in range(50):
            if len(stock) == 4:
                break
            await asyncio.sleep(0.01)
        assert len(stock) == 4
        got = [stock.take() for _ in range(3)]
        assert all(isinstance(s, socket.socket) for s in got)
        for _ in range(50):  # fell below `low`: one more batch came
            if len(made) == 8:
                break
            await asyncio.sleep(0.01)
        assert len(made) == 8
        stock.close()
        assert len(stock) == 0 and stock.take() is None
        for s in got:
            s.close()
        await asyncio.sleep(0.05)
        assert all(s.fileno() == -1 for s in made)  # closed with the pod, none left open


async def test_a_batch_arriving_after_close_is_closed_and_failures_keep_what_was_made() -> None:
    made: list[socket.socket] = []
    calls = 0

    def make() -> socket.socket:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("netns gone")
        s = socket.socket()
        made.append(s)
        return s

    with ThreadPoolExecutor(1) as pool:
        stock = SocketStock(make, executor=pool, batch=4, low=1)
        stock.take()
        stock.close()  # before the batch is back
        await asyncio.sleep(0.1)
        assert calls == 3 and len(made) == 2
        assert all(s.fileno() == -1 for s in made)
