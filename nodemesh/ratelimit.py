"""A token bucket, shared by the agent's and the control plane's tap rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """`rate` admissions per second with a burst of max(1, rate)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def admit(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
