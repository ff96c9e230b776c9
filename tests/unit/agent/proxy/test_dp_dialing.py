"""The outbound dial plan, played like a Playbook: each report in, the next dial (or the end) out."""

from __future__ import annotations

import random
from dataclasses import dataclass

from nodeagent.proxy.balancer import Balancer
from nodeagent.proxy.dialing import Dial, DialPlan, GiveUp, Wait


@dataclass(frozen=True)
class T:
    ip: str
    port: int = 80

    @property
    def key(self) -> tuple[str, int]:
        return self.ip, self.port


A, B, C = T("10.0.0.1"), T("10.0.0.2"), T("10.0.0.3")


def plan(targets=(A, B, C), **kw) -> DialPlan:
    kw.setdefault("known", True)
    return DialPlan(
        targets=targets,
        balancer=Balancer(rng=random.Random(1)),
        max_attempts=3,
        short_timeout=1.0,
        long_timeout=10.0,
        **kw,
    )


def test_refused_endpoints_are_tried_once_each_the_last_with_the_long_timeout() -> None:
    p = plan()
    dials = []
    while isinstance(step := p.next(0.0), Dial):
        dials.append(step)
        p.failed(f"{step.target.ip}: refused", now=0.0)
    assert sorted(d.target.ip for d in dials) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [(d.timeout, d.more) for d in dials] == [(1.0, True), (1.0, True), (10.0, False)]
    assert step == GiveUp(f"{dials[-1].target.ip}: refused", dials[-1].target)
    # The balancer now keeps clear of all three.
    assert all(p.balancer.is_down(t.key, 1.0) for t in (A, B, C))


def test_a_policy_refusal_ends_it_at_once() -> None:
    p = plan()
    first = p.next(0.0)
    assert isinstance(first, Dial)
    p.failed("destination refused: policy", now=0.0, denied=True)
    assert p.next(0.0) == GiveUp("destination refused: policy", first.target)
    assert not p.balancer.is_down(first.target.key, 0.0)  # the endpoint is fine


def test_a_client_that_left_is_not_dialled_for() -> None:
    p = plan()
    p.next(0.0)
    p.failed("timed out", now=0.0, client_gone=True)
    assert isinstance(p.next(0.0), GiveUp)


def test_no_ready_endpoint_is_refused_naming_the_service_and_unknown_gets_one_long_dial() -> None:
    assert plan(no_endpoints="shop/web has no ready endpoint").next(0.0) == GiveUp(
        "shop/web has no ready endpoint", None
    )
    p = plan(targets=(A,), known=False)
    assert p.next(0.0) == Dial(A, 10.0)
    p.failed("refused", now=0.0)
    assert p.next(0.0) == GiveUp("refused", A)


def test_a_meshed_pod_whose_tunnel_is_still_opening_is_waited_for_then_dialled_again() -> None:
    # A pod meshed while it runs is announced before its agent opens the tunnel port: the one
    # endpoint refuses; that is not an attempt, the shell waits and dials it again.
    p = plan(targets=(A,), opening_window=5.0, opening_retry=0.1)
    assert p.next(0.0) == Dial(A, 10.0)
    for t in (0.0, 1.0, 2.0):
        p.failed("refused", now=t, tunnel_refused=True)
        assert p.next(t) == Wait(0.1)
        assert p.next(t + 0.1) == Dial(A, 10.0)
    # Past the window a refusal counts like any other, and with one endpoint that is the end.
    p.failed("refused", now=6.0, tunnel_refused=True)
    assert p.next(6.0) == GiveUp("refused", A)


def test_other_endpoints_go_first_while_one_tunnel_opens() -> None:
    p = plan(targets=(A, B), opening_window=5.0)
    first = p.next(0.0)
    assert isinstance(first, Dial)
    p.failed("refused", now=0.0, tunnel_refused=True)
    second = p.next(0.0)
    assert isinstance(second, Dial) and second.target != first.target
    p.failed("refused", now=0.0)  # a plain refusal: an attempt
    assert isinstance(p.next(0.0), Wait)
    assert p.next(0.1) == Dial(first.target, 10.0, False)
