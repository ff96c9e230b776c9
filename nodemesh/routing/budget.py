"""Retry budget (sans-io; the caller passes the time): retries in the last `ttl_s` seconds may be
at most `ratio` of the requests in that window plus `min_per_second` per second of the window,
as Linkerd's budgets, so a failing backend gets a bounded extra load and never a retry storm."""

from __future__ import annotations

from collections import deque

from nodemesh.routing.model import RetryBudget


class Budget:
    def __init__(self, config: RetryBudget) -> None:
        self.config = config
        # (whole second, requests, retries) per second of the window, oldest first.
        self._slots: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0
        self.refused = 0

    def _advance(self, now: float) -> list[int]:
        second = int(now)
        horizon = second - self.config.ttl_s
        while self._slots and self._slots[0][0] <= horizon:
            _, req, ret = self._slots.popleft()
            self._requests -= req
            self._retries -= ret
        if not self._slots or self._slots[-1][0] != second:
            self._slots.append([second, 0, 0])
        return self._slots[-1]

    def request(self, now: float) -> None:
        """A request (its first attempt) was sent."""
        self._advance(now)[1] += 1
        self._requests += 1

    def try_retry(self, now: float) -> bool:
        """Withdraw one retry if the budget allows it; False (and counted) when it does not."""
        slot = self._advance(now)
        allowed = (
            self.config.ratio * self._requests + self.config.min_per_second * self.config.ttl_s
        )
        if self._retries + 1 > allowed:
            self.refused += 1
            return False
        slot[2] += 1
        self._retries += 1
        return True
