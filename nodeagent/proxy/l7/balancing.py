"""The per-request balancer: nodeagent's power of two choices over peak-EWMA, with the estimate
of an endpoint decaying while it gets no traffic (as tower's and Finagle's PeakEwma do).

Without the decay, one slow answer (a pause of a few milliseconds) put an endpoint's estimate
above the others' times their outstanding requests, P2C then never picked it, so it got no new
sample and stayed shunned for good (loopback, one gRPC channel to three servers: 155/134/7).
An endpoint nobody has measured yet is tried first, so serial requests reach every endpoint.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from nodeagent.proxy.balancer import Balancer

DECAY_SECONDS = 1.0  # per request, samples come every few milliseconds


class RequestBalancer(Balancer):
    def __init__(self, **kw: object) -> None:
        kw.setdefault("decay", DECAY_SECONDS)
        super().__init__(**kw)  # type: ignore[arg-type]

    def cost(self, key: Hashable, now: float, *, unmeasured: float | None = None) -> float:
        load = self.loads.get(key)
        if load is None or load.ewma is None:
            # Never measured: try it first (an estimate borrowed from the others would be
            # undecayed while theirs decay, and serial requests would never reach it).
            return 0.0 if load is None or load.outstanding == 0 else self.default_rtt
        idle = max(now - load.stamp, 0.0)
        rtt = load.ewma * math.exp(-idle / self.decay)
        return rtt * (load.outstanding + 1)
