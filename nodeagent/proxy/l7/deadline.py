"""One task's successive waits, each bounded by a timeout, on a single timer.

`asyncio.timeout()` costs, for every wait, a Timeout object, a current_task() lookup (a
getpid() system call on CPython 3.11), a timer made and a timer cancelled: about a sixth of
the L7 path's Python time per request, most of it for a keep-alive connection's 60 s wait for
its next request head, which is almost never reached. Here the timer is made once and left
running: a wait only writes down its deadline. When the timer fires, it cancels the task if
the wait under way has passed its deadline, sets itself again for that deadline if it is
later, and lapses if no wait is under way (the next one sets it again).

Only for waits in the task that made it, one at a time (not nested)::

    deadlines.start(timeout)
    try:
        data = await reader.read(n)
    except asyncio.CancelledError:
        deadlines.check()  # TimeoutError if this deadline cancelled the wait
        raise
    finally:
        deadlines.stop()
"""

from __future__ import annotations

import asyncio
import math


class Deadlines:
    __slots__ = ("loop", "task", "handle", "armed", "deadline", "expired")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.handle: asyncio.TimerHandle | None = None
        self.armed = math.inf  # when the timer fires
        self.deadline: float | None = None  # the wait under way's
        self.expired = False  # it cancelled the task; the wait has not seen it yet

    def start(self, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        self.deadline = deadline
        if deadline < self.armed:
            if self.handle is not None:
                self.handle.cancel()
            self.armed = deadline
            self.handle = self.loop.call_at(deadline, self._fire)

    def stop(self) -> None:
        self.deadline = None

    def check(self) -> None:
        """In the wait's `except CancelledError`: TimeoutError when the cancellation was this
        deadline's and nobody else cancelled the task meanwhile (then it stays cancelled)."""
        if self.expired:
            self.expired = False
            if self.task.uncancel() == 0:
                raise TimeoutError from None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.armed = math.inf
        self.deadline = None

    def _fire(self) -> None:
        self.handle = None
        self.armed = math.inf
        deadline = self.deadline
        if deadline is None:
            return
        if self.loop.time() < deadline:  # a later wait's: its own time
            self.armed = deadline
            self.handle = self.loop.call_at(deadline, self._fire)
            return
        self.deadline = None
        self.expired = True
        self.task.cancel()
