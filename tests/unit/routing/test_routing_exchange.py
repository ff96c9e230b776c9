"""The L7 request state machine, played like mitmproxy's Playbook: events in, commands out."""

from __future__ import annotations

import pytest
from route_objects import http_route

from nodemesh.model import ServiceKey
from nodemesh.routing.budget import Budget
from nodemesh.routing.exchange import (
    Answer,
    Cancel,
    Close,
    Exchange,
    Forward,
    HeadReceived,
    ResponseEnded,
    Send,
    Sleep,
    TimerFired,
    UnexpectedEvent,
    UpstreamFailed,
)
from nodemesh.routing.model import Backend, RetryBudget
from nodemesh.routing.spec import compile_route

V1 = Backend(ServiceKey("emojivoto", "web-v1"), 80, 90)
V2 = Backend(ServiceKey("emojivoto", "web-v2"), 80, 10)


def rule(**rule_fields):
    r = {"backendRefs": [{"name": "web-v1", "port": 80}]}
    r.update(rule_fields)
    return compile_route(http_route("web", rules=[r])).rules[0]


def exchange(r, *, method="GET", body=0, buffered=True, budget=None, now=0.0, **kw) -> Exchange:
    return Exchange(
        rule=r,
        backend_choice=[V1, V2, V1],
        method=method,
        body_buffered=buffered,
        body_size=body,
        budget=budget,
        now=now,
        **kw,
    )


class Playbook:
    """`play(x, [(event, [commands]), ...])`: each event must produce exactly those commands."""

    @staticmethod
    def play(x: Exchange, steps: list) -> None:
        for i, (event, expected) in enumerate(steps):
            got = x.begin() if event == "begin" else x.handle(event)
            assert got == expected, f"step {i} ({event}): {got} != {expected}"


def test_a_plain_request_is_sent_forwarded_and_done() -> None:
    x = exchange(rule())
    Playbook.play(
        x,
        [
            ("begin", [Send(V1, 1, None)]),
            (HeadReceived(200, 0.01), [Forward()]),
            (ResponseEnded(0.02), []),
        ],
    )
    assert x.outcome == "ok" and x.next_timer() is None


def test_request_timeout_before_the_head_cancels_the_upstream_and_answers_504() -> None:
    x = exchange(rule(timeouts={"request": "200ms"}), now=10.0)
    Playbook.play(x, [("begin", [Send(V1, 1, None)])])
    assert x.next_timer() == pytest.approx(10.2)
    Playbook.play(x, [(TimerFired(10.2), [Cancel(), Answer(504, "timeouts.request passed")])])
    with pytest.raises(UnexpectedEvent):
        x.handle(HeadReceived(200, 10.3))  # nothing is expected once answered


def test_request_timeout_while_streaming_cuts_the_response() -> None:
    x = exchange(rule(timeouts={"request": "1s"}))
    x.begin()
    Playbook.play(
        x,
        [
            (HeadReceived(200, 0.1), [Forward()]),
            (
                TimerFired(1.0),
                [Cancel(), Close("timeouts.request passed while the response streamed")],
            ),
        ],
    )


def test_503_is_retried_on_the_next_backend_choice_within_attempts() -> None:
    r = rule(retry={"codes": [503], "attempts": 2})
    x = exchange(r)
    Playbook.play(
        x,
        [
            ("begin", [Send(V1, 1, None)]),
            (HeadReceived(503, 0.1), [Cancel(), Send(V2, 2, None)]),
            (HeadReceived(503, 0.2), [Cancel(), Send(V1, 3, None)]),
            # Attempts used up: the third 503 goes to the client as it is.
            (HeadReceived(503, 0.3), [Forward()]),
        ],
    )
    assert x.retries == 2


def test_backoff_waits_then_resends() -> None:
    x = exchange(rule(retry={"codes": [503], "attempts": 1, "backoff": "100ms"}))
    x.begin()
    Playbook.play(x, [(HeadReceived(503, 1.0), [Cancel(), Sleep(1.1)])])
    assert x.next_timer() == pytest.approx(1.1)
    Playbook.play(x, [(TimerFired(1.1), [Send(V2, 2, None)])])


@pytest.mark.parametrize(
    ("method", "body", "buffered", "allow"),
    [
        ("POST", 10, True, False),  # not idempotent and the route does not allow it
        ("GET", 100_000, True, False),  # body above the buffer
        ("PUT", 10, False, False),  # body streamed, not kept
    ],
)
def test_requests_that_must_not_be_retried_are_not(method, body, buffered, allow) -> None:
    x = exchange(
        rule(retry={"codes": [503], "attempts": 3}),
        method=method,
        body=body,
        buffered=buffered,
        retry_non_idempotent=allow,
    )
    x.begin()
    Playbook.play(x, [(HeadReceived(503, 0.1), [Forward()])])


def test_post_is_retried_when_the_route_allows_it() -> None:
    x = exchange(
        rule(retry={"codes": [503], "attempts": 1}),
        method="POST",
        body=10,
        retry_non_idempotent=True,
    )
    x.begin()
    Playbook.play(x, [(HeadReceived(503, 0.1), [Cancel(), Send(V2, 2, None)])])


def test_a_connection_that_failed_before_sending_is_redialled_without_a_retry_rule() -> None:
    x = exchange(rule())
    Playbook.play(
        x,
        [
            ("begin", [Send(V1, 1, None)]),
            (UpstreamFailed("refused", sent=False, now=0.1), [Send(V2, 2, None)]),
            (UpstreamFailed("refused", sent=False, now=0.2), [Send(V1, 3, None)]),
            (
                UpstreamFailed("refused", sent=False, now=0.3),
                [Answer(502, "upstream failed: refused")],
            ),
        ],
    )


def test_a_failure_after_sending_is_not_retried_without_a_retry_rule() -> None:
    x = exchange(rule())
    x.begin()
    Playbook.play(
        x, [(UpstreamFailed("reset", sent=True, now=0.1), [Answer(502, "upstream failed: reset")])]
    )


def test_backend_request_timeout_is_retried_when_504_is_a_retry_code() -> None:
    r = rule(
        timeouts={"request": "1s", "backendRequest": "100ms"},
        retry={"codes": [504], "attempts": 1},
    )
    x = exchange(r)
    Playbook.play(
        x,
        [
            ("begin", [Send(V1, 1, pytest.approx(0.1))]),
            (TimerFired(0.1), [Cancel(), Send(V2, 2, pytest.approx(0.2))]),
            (TimerFired(0.2), [Cancel(), Answer(504, "timeouts.backendRequest passed")]),
        ],
    )


def test_the_budget_stops_retries_when_everything_fails() -> None:
    budget = Budget(RetryBudget(ratio=0.2, min_per_second=0, ttl_s=10))
    r = rule(retry={"codes": [503], "attempts": 3})
    retries = 0
    for i in range(500):
        now = i / 50
        x = exchange(r, budget=budget, now=now)
        x.begin()
        while True:
            commands = x.handle(HeadReceived(503, now))
            if commands == [Forward()]:
                break
        retries += x.retries
    # Without the budget each request would have been tried 4 times (1500 retries).
    assert retries <= 0.2 * 500 + 1
    assert budget.refused > 0


def test_grpc_unavailable_in_a_trailers_only_answer_is_retried() -> None:
    """A gRPC server's error arrives as :status 200 with grpc-status in the (trailers-only)
    head: UNAVAILABLE is what 503 is to HTTP, so a retry on 503 retries it."""
    # gRPC calls are POSTs the L7 path may retry (retry_non_idempotent, as http2.py passes).
    grpc = {"method": "POST", "grpc": True, "retry_non_idempotent": True}
    x = exchange(rule(retry={"codes": [503], "attempts": 2}), **grpc)
    Playbook.play(
        x,
        [
            ("begin", [Send(V1, 1, None)]),
            (HeadReceived(200, 0.1, grpc_status=14), [Cancel(), Send(V2, 2, None)]),
            (HeadReceived(200, 0.2, grpc_status=0), [Forward()]),
        ],
    )
    assert x.retries == 1
    # Other statuses are the app's answer: forwarded.
    other = exchange(rule(retry={"codes": [503], "attempts": 2}), **grpc)
    other.begin()
    assert other.handle(HeadReceived(200, 0.1, grpc_status=5)) == [Forward()]  # NOT_FOUND
    # A grpc-status means nothing to a plain HTTP request.
    plain = exchange(rule(retry={"codes": [503], "attempts": 2}))
    plain.begin()
    assert plain.handle(HeadReceived(200, 0.1, grpc_status=14)) == [Forward()]
