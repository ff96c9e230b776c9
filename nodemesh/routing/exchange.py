"""One HTTP request on the agent's L7 path, as a state machine (sans-io: events in, commands out).

The shell (the agent's L7 proxy) feeds what happened (a response head arrived, the upstream
failed, a timer fired) and carries out what comes back (send to a backend, cancel the upstream,
answer the client). Every transition is in `_TABLE`; an event a state does not expect is a bug
and raises, never a silent fall-through (h11's `_state.py` style).

Decisions it owns:
- timeouts.request: from the start; firing before the response head answers 504 (gRPC callers
  get DEADLINE_EXCEEDED from the shell) and cancels the upstream; firing while the response
  streams cancels the upstream and ends the client's response.
- timeouts.backendRequest: per attempt; a retryable failure when 504 is among the retry codes.
- gRPC: a call's failure is :status 200 with a grpc-status; when that status comes in the
  response head (trailers-only, what a server sends when it fails a call before any message)
  the HTTP retry codes stand for their gRPC counterparts (GRPC_OF_HTTP: 503 -> UNAVAILABLE,
  ...), so `retry` on a GRPCRoute (codes default to 503) retries UNAVAILABLE. A grpc-status
  in trailers after a message was forwarded is the app's answer: never retried.
- retries: only when the rule has `retry`, attempts remain, the request body was buffered whole
  and is at most `body_limit`, the method is idempotent (or the route allows others), and the
  budget grants one. A failed connection before any byte was sent is always safe to retry (on
  another endpoint) within the attempts, budget or not: that is today's dial behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from nodemesh.routing.budget import Budget
from nodemesh.routing.model import Backend, RouteRule
from nodemesh.routing.spec import IDEMPOTENT

# The gRPC status a retry code stands for on a gRPC call (gRPC's own HTTP-to-status mapping
# for 429/502/503/504; 500 as the agent answers it).
GRPC_OF_HTTP = {429: 8, 500: 13, 502: 14, 503: 14, 504: 4}
BODY_LIMIT = 64 * 1024  # bytes of request body kept for a retry
CONNECT_ATTEMPTS = 3  # tries of a request whose connection failed (other endpoints)


class State(Enum):
    SENDING = auto()  # sent to an upstream, waiting for the response head
    BACKOFF = auto()  # waiting before the next attempt
    STREAMING = auto()  # the response is going to the client
    DONE = auto()


# -- commands (imperative) -------------------------------------------------------------------
# Commands and events are made for every request: plain slotted dataclasses, not frozen ones
# (a frozen one's __init__ pays an object.__setattr__ per field). Nobody changes them.


@dataclass(slots=True)
class Send:
    """Send the request to `backend` (the shell picks the endpoint); attempt counts from 1."""

    backend: Backend | None  # None: the Service the client called (no backendRefs)
    attempt: int
    deadline: float | None  # when the backendRequest timer fires, if any


@dataclass(frozen=True, slots=True)
class Cancel:
    """Abandon the upstream exchange (HTTP/1: close the connection; HTTP/2: RST_STREAM)."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the upstream's response (head and body) to the client."""


@dataclass(slots=True)
class Answer:
    """Answer the client ourselves."""

    status: int
    reason: str


@dataclass(slots=True)
class Close:
    """End the client's response early (its head was already sent)."""

    reason: str


@dataclass(slots=True)
class Sleep:
    until: float


Command = Send | Cancel | Forward | Answer | Close | Sleep


# -- events (past tense; each carries the shell's clock) --------------------------------------


@dataclass(slots=True)
class HeadReceived:
    status: int
    now: float
    grpc_status: int | None = None  # when the head ends the response (trailers-only)


@dataclass(slots=True)
class UpstreamFailed:
    error: str
    sent: bool  # whether any request byte may have reached the app
    now: float


@dataclass(slots=True)
class TimerFired:
    now: float


@dataclass(slots=True)
class ResponseEnded:
    now: float


Event = HeadReceived | UpstreamFailed | TimerFired | ResponseEnded


class UnexpectedEvent(RuntimeError):
    """An event the current state has no transition for (a bug in the shell)."""


class Exchange:
    def __init__(
        self,
        *,
        rule: RouteRule | None,
        backend_choice: list[Backend | None],
        method: str,
        body_buffered: bool,
        body_size: int,
        budget: Budget | None,
        now: float,
        retry_non_idempotent: bool = False,
        body_limit: int = BODY_LIMIT,
        grpc: bool = False,
    ) -> None:
        """`backend_choice`: the backends for attempt 1, 2, ... (picked by weight by the
        shell); its last entry serves the attempts beyond it."""
        self.rule = rule
        self.choices = backend_choice or [None]
        self.budget = budget
        self.attempt = 0
        self.retries = 0
        self.state = State.SENDING
        self.start = now
        self.wake = 0.0
        timeout = rule.request_timeout_ms if rule else 0
        self.deadline = now + timeout / 1000 if timeout else None
        retry = rule.retry if rule else None
        self.max_attempts = 1 + (retry.attempts if retry else 0)
        self.codes = frozenset(retry.codes) if retry else frozenset()
        self.grpc_codes = (
            frozenset(GRPC_OF_HTTP[c] for c in self.codes if c in GRPC_OF_HTTP)
            if grpc
            else frozenset()
        )
        self.backoff = (retry.backoff_ms / 1000) if retry else 0.0
        self.replayable = body_buffered and body_size <= body_limit
        self.idempotent = method in IDEMPOTENT or retry_non_idempotent
        self.attempt_deadline: float | None = None
        self.outcome = ""
        if budget is not None:
            budget.request(now)

    # -- what the shell calls ----------------------------------------------------------------

    def begin(self) -> list[Command]:
        return [self._send(self.start)]

    def next_timer(self) -> float | None:
        """When the shell must report TimerFired next (None: no timer)."""
        if self.state is State.DONE:
            return None
        times = [t for t in (self.deadline, self.attempt_deadline) if t is not None]
        if self.state is State.BACKOFF:
            times.append(self.wake)
        return min(times) if times else None

    def handle(self, event: Event) -> list[Command]:
        handler = _TABLE.get((self.state, type(event)))
        if handler is None:
            raise UnexpectedEvent(f"{type(event).__name__} in state {self.state.name}")
        return handler(self, event)

    # -- transitions ---------------------------------------------------------------------------

    def _send(self, now: float) -> Send:
        self.attempt += 1
        backend = self.choices[min(self.attempt, len(self.choices)) - 1]
        backend_ms = self.rule.backend_timeout_ms if self.rule else 0
        self.attempt_deadline = now + backend_ms / 1000 if backend_ms else None
        if self.attempt_deadline is not None and self.deadline is not None:
            if self.attempt_deadline >= self.deadline:
                self.attempt_deadline = None  # the request's own deadline comes first
        self.state = State.SENDING
        return Send(backend, self.attempt, self.attempt_deadline)

    def _head(self, event: HeadReceived) -> list[Command]:
        retryable = event.status in self.codes or (
            event.grpc_status is not None and event.grpc_status in self.grpc_codes
        )
        if retryable and self._may_retry(event.now):
            return self._retry(event.now, cancel=True)
        self.state = State.STREAMING
        self.attempt_deadline = None
        return [Forward()]

    def _failed(self, event: UpstreamFailed) -> list[Command]:
        if not event.sent and self.attempt < max(self.max_attempts, CONNECT_ATTEMPTS):
            # Nothing reached the app: another endpoint is a plain redial, budget or not.
            return self._retry(event.now, cancel=False)
        if event.sent and self._may_retry(event.now):
            return self._retry(event.now, cancel=False)
        return self._finish(Answer(502, f"upstream failed: {event.error}"))

    def _timer(self, event: TimerFired) -> list[Command]:
        now = event.now
        if self.deadline is not None and now >= self.deadline:
            self.outcome = "timeout"
            if self.state is State.STREAMING:
                self.state = State.DONE
                return [Cancel(), Close("timeouts.request passed while the response streamed")]
            cancel: list[Command] = [Cancel()] if self.state is State.SENDING else []
            return [*cancel, *self._finish(Answer(504, "timeouts.request passed"))]
        if self.state is State.SENDING and self.attempt_deadline is not None:
            if now >= self.attempt_deadline:
                if 504 in self.codes and self._may_retry(now):
                    return self._retry(now, cancel=True)
                self.outcome = "timeout"
                return [Cancel(), *self._finish(Answer(504, "timeouts.backendRequest passed"))]
        if self.state is State.BACKOFF and now >= self.wake:
            return [self._send(now)]
        return []

    def _ended(self, event: ResponseEnded) -> list[Command]:
        self.state = State.DONE
        self.outcome = self.outcome or "ok"
        return []

    def _cut(self, event: UpstreamFailed) -> list[Command]:
        self.state = State.DONE
        self.outcome = "failed while streaming"
        return [Close(f"upstream failed while the response streamed: {event.error}")]

    # -- helpers -------------------------------------------------------------------------------

    def _may_retry(self, now: float) -> bool:
        if self.attempt >= self.max_attempts or not self.replayable or not self.idempotent:
            return False
        return self.budget is None or self.budget.try_retry(now)

    def _retry(self, now: float, *, cancel: bool) -> list[Command]:
        self.retries += 1
        out: list[Command] = [Cancel()] if cancel else []
        if self.backoff:
            self.state = State.BACKOFF
            self.wake = now + self.backoff * self.retries
            self.attempt_deadline = None
            return [*out, Sleep(self.wake)]
        return [*out, self._send(now)]

    def _finish(self, answer: Answer) -> list[Command]:
        self.state = State.DONE
        self.outcome = self.outcome or f"answered {answer.status}"
        return [answer]


_TABLE: dict[tuple[State, type], Callable[[Exchange, Any], list[Command]]] = {
    (State.SENDING, HeadReceived): Exchange._head,
    (State.SENDING, UpstreamFailed): Exchange._failed,
    (State.SENDING, TimerFired): Exchange._timer,
    (State.BACKOFF, TimerFired): Exchange._timer,
    (State.STREAMING, TimerFired): Exchange._timer,
    (State.STREAMING, ResponseEnded): Exchange._ended,
    (State.STREAMING, UpstreamFailed): Exchange._cut,
}
