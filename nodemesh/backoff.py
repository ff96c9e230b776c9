"""Exponential backoff with jitter for reconnecting streams and watches (sans-io: it only
computes delays). Shared by the control plane's Kubernetes watches and the agent's streams."""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self, *, first: float = 0.2, factor: float = 2.0, cap: float = 30.0, jitter: float = 0.2
    ) -> None:
        self.first, self.factor, self.cap, self.jitter = first, factor, cap, jitter
        self._next = first

    def delay(self) -> float:
        """The delay before the next attempt; each call without a `reset` doubles it, to `cap`."""
        base = self._next
        self._next = min(self.cap, self._next * self.factor)
        # Jitter keeps many control planes (or kinds) from reconnecting in lockstep.
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        self._next = self.first
