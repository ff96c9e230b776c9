"""Which endpoint an outbound connection dials next, and when it gives up (sans-io).

The shell (proxy/outbound.py) asks `next()` for a `Dial` (a target and its connect timeout),
tries it, and reports `failed(...)` or `connected()`; `next()` answers `GiveUp` with the error
the app's connection is refused with. The rules, as a table of outcomes:
- at most `max_attempts` dials, never the same endpoint twice, endpoints picked by the balancer;
- a dial with other candidates left gets the short timeout (a dead pod must not hold the client)
  and says so (`more`), so the shell shortens its handshake wait as well;
- the destination's policy refusing us (denied) ends it: another endpoint would say the same;
- the client having gone ends it: nobody is waiting for a retry;
- a Service with no ready endpoint is refused at once, naming the Service;
- a meshed endpoint whose agent refused the tunnel (a pod meshed while it runs is announced
  before its agent has opened the tunnel port) is not counted as an attempt: once nothing else
  is left to try, the shell is told to `Wait` and it is dialled again, until `opening_window`
  seconds after that first refusal.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Picker(Protocol):
    def pick(self, targets: Sequence[Any], *, now: float, exclude: Any = ()) -> Any: ...
    def failed(self, key: Hashable, *, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Dial:
    target: Any
    timeout: float  # to connect
    more: bool = False  # other candidates remain (the shell shortens its own waits too)


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float  # then ask next() again


@dataclass(frozen=True, slots=True)
class GiveUp:
    error: str
    last: Any  # the last target tried, or None


class DialPlan:
    def __init__(
        self,
        *,
        targets: Sequence[Any],
        known: bool,
        balancer: Picker,
        max_attempts: int,
        short_timeout: float,
        long_timeout: float,
        no_endpoints: str = "",
        opening_window: float = 0.0,
        opening_retry: float = 0.1,
    ) -> None:
        self.targets, self.known, self.balancer = targets, known, balancer
        self.max_attempts = 0 if no_endpoints else max_attempts
        self.short, self.long = short_timeout, long_timeout
        self.error = no_endpoints
        self.tried: set[Hashable] = set()
        self.last: Any = None
        self.done = False
        self.attempts = 0  # failed dials that count (a tunnel still opening does not)
        self.opening_window, self.opening_retry = opening_window, opening_retry
        self.opening: Any = None  # a meshed target whose agent refused the tunnel
        self.opening_until: float | None = None
        self.redial: Any = None  # the opening target, dialled after a Wait

    def next(self, now: float) -> Dial | Wait | GiveUp:
        if self.done or self.attempts >= self.max_attempts:
            return GiveUp(self.error, self.last)
        target, self.redial = self.redial, None
        if target is None:
            target = self.balancer.pick(self.targets, now=now, exclude=self.tried)
        if target is None:
            if self.opening is not None and self.opening_until and now < self.opening_until:
                self.redial, self.opening = self.opening, None
                return Wait(self.opening_retry)
            return GiveUp(self.error, self.last)
        self.tried.add(target.key)
        self.last = target
        more = (
            self.known
            and self.attempts + 1 < self.max_attempts
            and len(self.tried) < len(self.targets)
        )
        return Dial(target, self.short if more else self.long, more)

    def failed(
        self,
        error: str,
        *,
        now: float,
        denied: bool = False,
        client_gone: bool = False,
        tunnel_refused: bool = False,
    ) -> None:
        """The last dial failed with `error` (`tunnel_refused`: a meshed endpoint's agent
        refused the connection to its tunnel port)."""
        self.error = error
        if denied:
            self.done = True
            return
        self.balancer.failed(self.last.key, now=now)
        if client_gone:
            self.done = True
            return
        if tunnel_refused and self.opening_window > 0:
            if self.opening_until is None:
                self.opening_until = now + self.opening_window
            if now < self.opening_until:
                self.opening = self.last
                return
        self.attempts += 1
