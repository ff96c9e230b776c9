"""When a step has hurt a workload: its success rate now against its level before the step.

A workload's rate over a short window moves with chance (emojivoto's doughnut votes fail on
purpose, one in seven), so a drop counts only beyond a tolerance and beyond three standard
errors of the rate measured now. Pure: rates in, a verdict out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_TOLERANCE = 0.05
DEFAULT_MIN_REQUESTS = 10


@dataclass(frozen=True)
class Sample:
    """One workload's responses in a window, as `stat` gives them."""

    workload: str  # "ns/deploy"
    requests: int
    success_rate: float | None  # None without responses


@dataclass(frozen=True)
class Drop:
    workload: str
    before: float
    now: float
    requests: int

    def __str__(self) -> str:
        return (f"{self.workload}: success rate {self.now:.1%} over {self.requests} requests, "
                f"{self.before:.1%} before the step")  # fmt: skip


def baseline(
    samples: list[Sample], *, min_requests: int = DEFAULT_MIN_REQUESTS
) -> dict[str, Sample]:
    """The workloads whose rate before the step is known well enough to judge by."""
    return {
        s.workload: s for s in samples if s.success_rate is not None and s.requests >= min_requests
    }


def levels(
    long: dict[str, Sample], recent: list[Sample], *, min_requests: int = DEFAULT_MIN_REQUESTS
) -> dict[str, Sample]:
    """Each workload's level before a step: the lower of its rate over the long window and
    over the recent one (the watch's own window). A workload still recovering from an earlier
    incident has a long-window rate its recent window beats, but that window still holds the
    incident's tail: judged against the long rate, the next step would be blamed for it."""
    out = dict(long)
    for s in recent:
        was = out.get(s.workload)
        if (
            was is not None
            and s.success_rate is not None
            and was.success_rate is not None
            and s.requests >= min_requests
            and s.success_rate < was.success_rate
        ):
            out[s.workload] = s
    return out


def drops(
    before: dict[str, Sample],
    now: list[Sample],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    min_requests: int = DEFAULT_MIN_REQUESTS,
) -> list[Drop]:
    """Workloads whose rate now is below their rate before by more than chance explains; and
    "all workloads" when nothing answers at all any more where at least 3 x min_requests did
    before (traffic that no longer arrives fails where no agent sees it). One workload going
    quiet proves nothing: a step moves where requests are counted (once a destination is
    meshed they count as its inbound, not as the caller's outbound)."""
    found = []
    total_before = sum(s.requests for s in before.values())
    if total_before >= 3 * min_requests and sum(s.requests for s in now) == 0:
        rate = sum((s.success_rate or 0) * s.requests for s in before.values()) / total_before
        found.append(Drop("all workloads", rate, 0.0, 0))
    for s in now:
        was = before.get(s.workload)
        if was is None or was.success_rate is None:
            continue
        level = was.success_rate
        if s.success_rate is None or s.requests < min_requests:
            continue
        p = min(max(level, 0.0), 1.0)
        noise = 3 * math.sqrt(p * (1 - p) / s.requests)
        if s.success_rate < level - max(tolerance, noise):
            found.append(Drop(s.workload, level, s.success_rate, s.requests))
    return sorted(found, key=lambda d: d.workload)
