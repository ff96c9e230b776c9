"""A slow answer must not shun an endpoint for good: its estimate decays while it is idle."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from nodeagent.proxy.balancer import Balancer
from nodeagent.proxy.l7.balancing import RequestBalancer


@dataclass(frozen=True)
class T:
    name: str

    @property
    def key(self) -> str:
        return self.name


def share_after_a_spike(balancer: Balancer) -> Counter[str]:
    targets = [T("a"), T("b"), T("c")]
    now = 0.0
    for t in targets:
        balancer.observe(t.key, 0.0005, now=now)
    balancer.observe("c", 0.020, now=now)  # one slow answer from c
    picks: Counter[str] = Counter()
    for step in range(2500):  # 5 s of requests, 4 in flight every 2 ms, 0.5 ms each
        now += 0.002
        chosen = []
        for _ in range(4):
            t = balancer.pick(targets, now=now)
            balancer.opened(t.key, now=now)
            chosen.append(t)
        for t in chosen:
            if step >= 2000:  # the last second
                picks[t.name] += 1
            balancer.observe(t.key, 0.0005, now=now)
            balancer.closed(t.key, now=now)
    return picks


def test_an_endpoint_that_answered_slowly_once_gets_its_share_back() -> None:
    picks = share_after_a_spike(RequestBalancer(rng=random.Random(3)))
    assert picks["c"] / sum(picks.values()) > 0.15, picks


def test_the_per_connection_balancer_keeps_shunning_it() -> None:
    # What the decay fixes: the relay's balancer never picks c again (no new sample comes).
    picks = share_after_a_spike(Balancer(rng=random.Random(3)))
    assert picks["c"] == 0, picks
