"""The vote-bot's counters: what it sent and how each request ended, the mesh's ground truth.

Outcomes are an HTTP status class ("2xx" .. "5xx"), "timeout" (no complete response in time)
or "error" (connect refused, reset, closed early, malformed response). A request *succeeded*
when it got a response below 500: a mesh classifies responses the same way (a 4xx is the
client's problem, not a failed request), so the two can be compared number for number.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = "timeout"
ERROR = "error"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def is_success(outcome: str) -> bool:
    return outcome in ("1xx", "2xx", "3xx", "4xx")


@dataclass
class BotStats:
    started_wall: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    in_flight: int = 0
    # Ticks that found max-in-flight requests outstanding: not sent, so counted apart.
    skipped: int = 0
    # Set when the bot stops sending for good (VOTE_DURATION or VOTE_MAX_REQUESTS reached and
    # every reply in), with the wall time, so rates can be taken over the sending time only.
    done: bool = False
    ended_wall: float | None = None
    by_path: dict[str, Counter[str]] = field(default_factory=dict)
    by_choice: dict[str, Counter[str]] = field(default_factory=dict)
    by_status: Counter[int] = field(default_factory=Counter)

    def request_sent(self) -> None:
        self.sent += 1
        self.in_flight += 1

    def request_ended(
        self, *, path: str, outcome: str, status: int | None = None, choice: str | None = None
    ) -> None:
        self.in_flight -= 1
        if is_success(outcome):
            self.succeeded += 1
        else:
            self.failed += 1
        self.by_path.setdefault(path, Counter())[outcome] += 1
        if choice is not None:
            self.by_choice.setdefault(choice, Counter())[outcome] += 1
        if status is not None:
            self.by_status[status] += 1

    def finish(self) -> None:
        self.done = True
        self.ended_wall = time.time()

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """A JSON-ready copy. Always: sent == succeeded + failed + in_flight."""
        return {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "skipped": self.skipped,
            "done": self.done,
            "started": self.started_wall,
            "ended": self.ended_wall,
            "now": time.time(),
            "elapsed_s": round(time.monotonic() - self.started_mono, 3),
            "by_path": {path: dict(c) for path, c in sorted(self.by_path.items())},
            "by_choice": {choice: dict(c) for choice, c in sorted(self.by_choice.items())},
            "by_status": {str(s): n for s, n in sorted(self.by_status.items())},
            **extra,
        }
