"""What one benchmark run measures and for how long: the full run and the smoke run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class RunPlan:
    rates: tuple[int, ...] = (100, 500, 1000)
    duration: float = 12.0  # measured seconds per fixed-rate run and path, in all
    rounds: int = 4  # ... taken in this many turns per path, the paths interleaved
    warmup: float = 0.5  # seconds sent before measuring (each turn), not counted
    conns: int = 32  # keep-alive connections of the HTTP load generator
    # The search for the highest rate whose added p99 stays under the limit.
    search_start: int = 1000
    search_max: int = 20000
    search_steps: int = 7
    search_duration: float = 4.5  # per step and path, in all
    search_rounds: int = 3  # turns of direct and the path per step; the median decides
    # A turn's p99 needs samples: each turn lasts long enough for this many requests (so at low
    # rates the p99 is not just the slowest of a few dozen), up to search_max_turn seconds, and
    # the search goes no lower than the rate where that cap still gives them all.
    search_min_samples: int = 300
    search_max_turn: float = 10.0
    added_p99_limit_ms: float = 2.0
    grpc_rate: int = 500
    newconn_rate: int = 200
    # The same search with a new connection per request, against its own limit (issue 17).
    newconn_search_start: int = 100
    newconn_search_max: int = 5000
    newconn_added_p99_limit_ms: float = 5.0
    other_duration: float = 8.0  # gRPC and new-connection runs, per path in all (`rounds` turns)
    bulk_seconds: float = 5.0
    idle_pods: int = 100
    loopback_rate: int = 1000  # the generator against a server in its own netns

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def search_turn_seconds(self, rate: float) -> float:
        """How long one turn of a search step at `rate` lasts."""
        spread = self.search_duration / self.search_rounds
        return min(max(spread, self.search_min_samples / rate), max(spread, self.search_max_turn))

    @property
    def search_lowest_rate(self) -> int:
        """The lowest rate a search tries: below it a turn holds too few requests for a p99."""
        return max(10, math.ceil(self.search_min_samples / self.search_max_turn))


FULL = RunPlan()

# Seconds, tiny rates: checks that every part of the harness works, measures nothing.
SMOKE = RunPlan(
    rates=(50, 100),
    duration=1.0,
    rounds=2,
    warmup=0.2,
    conns=4,
    search_start=100,
    search_max=400,
    search_steps=2,
    search_duration=1.0,
    search_rounds=2,
    search_min_samples=0,
    grpc_rate=50,
    newconn_rate=20,
    newconn_search_start=20,
    newconn_search_max=80,
    other_duration=1.0,
    bulk_seconds=1.0,
    idle_pods=4,
    loopback_rate=100,
)
