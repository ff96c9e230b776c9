"""Endpoint choice: power of two choices over peak-EWMA latency x outstanding work (sans-io).

Clocks and randomness are the caller's (monotonic seconds, a `random.Random`), so every choice
can be replayed in a test. An endpoint that refused or timed out is marked down for a few
seconds and is only tried again when nothing else is left. Load is kept per (ip, port) across
table updates, so an endpoint that leaves and comes back keeps its history for a while.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

# Cost of an endpoint nobody has measured yet: cheap enough to be tried, not so cheap that a
# new endpoint takes every connection before its first measurement.
DEFAULT_RTT = 0.005
# Time constant of the moving average: older samples weigh e^(-age/DECAY).
DECAY_SECONDS = 10.0
DOWN_SECONDS = 5.0
# Loads untouched this long (and with nothing outstanding) are forgotten.
FORGET_AFTER = 600.0
PRUNE_EVERY = 1024


class HasKey(Protocol):
    @property
    def key(self) -> Hashable: ...


T = TypeVar("T", bound=HasKey)


@dataclass(slots=True)
class EndpointLoad:
    ewma: float | None = None
    stamp: float = 0.0
    outstanding: int = 0
    down_until: float = 0.0
    failures: int = 0
    last_used: float = 0.0


class Balancer:
    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        decay: float = DECAY_SECONDS,
        down_for: float = DOWN_SECONDS,
        default_rtt: float = DEFAULT_RTT,
    ) -> None:
        self.rng = rng or random.Random()
        self.decay = decay
        self.down_for = down_for
        self.default_rtt = default_rtt
        self.loads: dict[Hashable, EndpointLoad] = {}
        self._picks = 0

    def _load(self, key: Hashable, now: float) -> EndpointLoad:
        load = self.loads.get(key)
        if load is None:
            load = self.loads[key] = EndpointLoad(stamp=now, last_used=now)
        return load

    def is_down(self, key: Hashable, now: float) -> bool:
        load = self.loads.get(key)
        return load is not None and load.down_until > now

    def cost(self, key: Hashable, now: float, *, unmeasured: float | None = None) -> float:
        """Latency estimate x (outstanding + 1); `unmeasured` stands in for a missing estimate.

        An estimate with no fresh sample decays toward `unmeasured` (what a new endpoint would
        be guessed at), weighing e^(-idle/decay): an endpoint that was slow once is not shunned
        for good (P2C would never pick it, so it would never be measured again), it is tried
        again within a few decay periods, as Finagle's and Linkerd's peak-EWMA decay.
        """
        load = self.loads.get(key)
        guess = self.default_rtt if unmeasured is None else unmeasured
        if load is None:
            return guess
        if load.ewma is None:
            rtt = guess
        else:
            w = math.exp(-max(now - load.stamp, 0.0) / self.decay)
            rtt = guess + (load.ewma - guess) * w
        return rtt * (load.outstanding + 1)

    def pick(
        self, targets: Sequence[T], *, now: float, exclude: Collection[Hashable] = ()
    ) -> T | None:
        """Two random candidates (not excluded, preferably not down); the cheaper one wins."""
        self._picks += 1
        if self._picks % PRUNE_EVERY == 0:
            self.prune(now)
        candidates = [t for t in targets if t.key not in exclude]
        if not candidates:
            return None
        up = [t for t in candidates if not self.is_down(t.key, now)]
        pool = up or candidates  # everything is down: one more try beats failing outright
        if len(pool) == 1:
            return pool[0]
        a, b = self.rng.sample(pool, 2)
        # A new endpoint (scale-up) is guessed as good as the best measured one, so it gets
        # connections at once instead of waiting for the others to be loaded past a default.
        known = [load.ewma for t in pool if (load := self.loads.get(t.key)) and load.ewma]
        guess = min(known) if known else None
        cost_a = self.cost(a.key, now, unmeasured=guess)
        return a if cost_a <= self.cost(b.key, now, unmeasured=guess) else b

    # --- what the I/O shell reports ---------------------------------------------------------

    def opened(self, key: Hashable, *, now: float) -> None:
        load = self._load(key, now)
        load.outstanding += 1
        load.last_used = now

    def closed(self, key: Hashable, *, now: float) -> None:
        load = self.loads.get(key)
        if load is not None and load.outstanding > 0:
            load.outstanding -= 1
            load.last_used = now

    def observe(self, key: Hashable, rtt: float, *, now: float) -> None:
        """A latency sample (connect time, time to first response byte)."""
        load = self._load(key, now)
        load.failures = 0
        load.last_used = now
        if load.ewma is None or rtt > load.ewma:
            # Peak-sensitive: a slow sample counts at once, recovery is gradual.
            load.ewma = rtt
        else:
            w = math.exp(-max(now - load.stamp, 0.0) / self.decay)
            load.ewma = load.ewma * w + rtt * (1.0 - w)
        load.stamp = now

    def failed(self, key: Hashable, *, now: float) -> None:
        """The endpoint refused or timed out: keep clear of it for a while."""
        load = self._load(key, now)
        load.failures += 1
        load.down_until = now + self.down_for
        load.last_used = now

    def prune(self, now: float) -> None:
        stale = [
            k
            for k, load in self.loads.items()
            if load.outstanding == 0 and now - load.last_used > FORGET_AFTER
        ]
        for k in stale:
            del self.loads[k]
