"""The balancer: power of two choices by EWMA x load, down-marking and retry exclusion."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from nodeagent.proxy.balancer import DEFAULT_RTT, Balancer


@dataclass(frozen=True)
class Ep:
    name: str

    @property
    def key(self) -> str:
        return self.name


A, B, C = Ep("a"), Ep("b"), Ep("c")


def picks(bal: Balancer, targets: list[Ep], n: int, *, now: float = 0.0) -> Counter[str]:
    return Counter(bal.pick(targets, now=now).name for _ in range(n))  # type: ignore[union-attr]


def test_of_two_the_faster_endpoint_wins_every_time() -> None:
    bal = Balancer(rng=random.Random(1))
    bal.observe("a", 0.050, now=0.0)
    bal.observe("b", 0.001, now=0.0)
    assert picks(bal, [A, B], 200) == {"b": 200}


def test_outstanding_work_counts_against_an_endpoint() -> None:
    bal = Balancer(rng=random.Random(2))
    bal.observe("a", 0.002, now=0.0)
    bal.observe("b", 0.002, now=0.0)
    for _ in range(3):
        bal.opened("a", now=0.0)
    assert picks(bal, [A, B], 50) == {"b": 50}
    for _ in range(3):
        bal.closed("a", now=0.0)
    bal.opened("b", now=0.0)
    assert picks(bal, [A, B], 50) == {"a": 50}


def test_the_slowest_of_three_is_never_chosen_and_the_others_share() -> None:
    # With three endpoints P2C never picks the worst one (it always loses its pair) and
    # spreads the rest: unlike "least loaded", it does not herd onto a single endpoint.
    bal = Balancer(rng=random.Random(3))
    bal.observe("a", 0.001, now=0.0)
    bal.observe("b", 0.002, now=0.0)
    bal.observe("c", 0.100, now=0.0)
    got = picks(bal, [A, B, C], 3000)
    assert got["c"] == 0
    assert 1800 < got["a"] < 2200 and 800 < got["b"] < 1200, got


def test_peak_ewma_rises_at_once_and_decays_with_time() -> None:
    bal = Balancer(decay=10.0)
    bal.observe("a", 0.001, now=0.0)
    bal.observe("a", 0.200, now=1.0)
    assert bal.loads["a"].ewma == 0.200  # a slow sample counts fully, immediately
    bal.observe("a", 0.001, now=1.5)  # half a second later: still mostly the peak
    assert 0.18 < bal.loads["a"].ewma < 0.2  # type: ignore[operator]
    bal.observe("a", 0.001, now=60.0)  # a minute later: the peak is forgotten
    assert bal.loads["a"].ewma < 0.002  # type: ignore[operator]


def test_unmeasured_endpoints_cost_the_default() -> None:
    bal = Balancer()
    assert bal.cost("new", 0.0) == DEFAULT_RTT
    bal.opened("new", now=0.0)
    assert bal.cost("new", 0.0) == 2 * DEFAULT_RTT


def test_a_failed_endpoint_is_skipped_while_down_then_tried_again() -> None:
    bal = Balancer(rng=random.Random(4), down_for=5.0)
    bal.observe("a", 0.001, now=0.0)  # the better one...
    bal.observe("b", 0.010, now=0.0)
    bal.failed("a", now=10.0)  # ...refused a connection
    assert picks(bal, [A, B], 100, now=11.0) == {"b": 100}
    assert picks(bal, [A, B], 100, now=16.0) == {"a": 100}


def test_when_everything_is_down_one_is_still_tried() -> None:
    bal = Balancer(rng=random.Random(5))
    bal.failed("a", now=0.0)
    bal.failed("b", now=0.0)
    assert bal.pick([A, B], now=1.0) in (A, B)


def test_retries_exclude_what_was_tried_and_end_when_nothing_is_left() -> None:
    bal = Balancer(rng=random.Random(6))
    tried: set[str] = set()
    order = []
    while (ep := bal.pick([A, B, C], now=0.0, exclude=tried)) is not None:
        tried.add(ep.key)
        order.append(ep.name)
    assert sorted(order) == ["a", "b", "c"]
    assert bal.pick([], now=0.0) is None


def test_a_new_endpoint_counts_as_good_as_the_best_known_one() -> None:
    # Scale-up: "c" has no measurement yet; it must win against a loaded peer at once.
    bal = Balancer(rng=random.Random(7))
    bal.observe("a", 0.001, now=0.0)
    bal.opened("a", now=0.0)
    assert picks(bal, [A, C], 20) == {"c": 20}


def test_idle_loads_are_forgotten() -> None:
    bal = Balancer()
    bal.observe("gone", 0.001, now=0.0)
    bal.opened("busy", now=0.0)
    bal.prune(now=10_000.0)
    assert "gone" not in bal.loads and "busy" in bal.loads


def test_an_endpoint_slow_once_is_tried_again_and_learnt_recovered() -> None:
    """Connections arrive 10 a second and last 1 s. `a` answered slowly once (a 500 ms pause) at
    the start and is fast (1 ms) ever after, like `b`. Its estimate must not shun it for good:
    while it gets no traffic its estimate decays toward what a fresh endpoint would get, so it
    is tried again, measured fast, and takes its share (Finagle's and Linkerd's peak-EWMA decay
    the same way). Before, `a` never got another connection."""
    bal = Balancer(rng=random.Random(7))
    bal.observe("a", 0.500, now=0.0)
    bal.observe("b", 0.001, now=0.0)
    open_until: list[tuple[float, str]] = []
    late: Counter[str] = Counter()
    for step in range(1200):  # two minutes
        now = step / 10
        for end, key in [c for c in open_until if c[0] <= now]:
            bal.closed(key, now=now)
            open_until.remove((end, key))
        chosen = bal.pick([A, B], now=now)
        assert chosen is not None
        bal.opened(chosen.key, now=now)
        bal.observe(chosen.key, 0.001, now=now)
        open_until.append((now + 1.0, chosen.key))
        if now >= 90:
            late[chosen.name] += 1
    # In the last 30 s both are equally fast: `a` takes a real share again.
    assert late["a"] >= 0.3 * sum(late.values()), late


def test_a_busy_endpoint_keeps_its_estimate() -> None:
    """The decay is for endpoints without fresh samples only: one measured a moment ago is
    costed by what was measured."""
    bal = Balancer(rng=random.Random(1))
    bal.observe("a", 0.050, now=100.0)
    bal.observe("b", 0.010, now=100.0)
    assert bal.cost("a", 100.0, unmeasured=0.010) == 0.050
