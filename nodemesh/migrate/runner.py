"""`migrate apply STEP`: apply one step's changes, watch every workload's success rate while
the step rolls out and for a while after, and write the old objects back when one drops."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nodemesh.migrate import watch
from nodemesh.migrate.backends import ROLLED_KINDS, Backend
from nodemesh.migrate.plan import Change, Step

Sampler = Callable[[int], list[watch.Sample]]  # window seconds -> samples
Echo = Callable[[str], None]


@dataclass
class Settings:
    watch_s: float = 60.0  # after the step has rolled out
    rollout_timeout_s: float = 300.0
    baseline_window_s: int = 60
    window_s: int = 10
    poll_s: float = 2.0
    tolerance: float = watch.DEFAULT_TOLERANCE
    min_requests: int = watch.DEFAULT_MIN_REQUESTS


@dataclass
class Outcome:
    step: str
    rolled_back: bool = False
    drops: list[watch.Drop] = field(default_factory=list)
    not_rolled_out: list[str] = field(default_factory=list)
    # Seconds from the step's first write: when the drop was seen, when the undo was written,
    # when the undo had rolled out.
    detected_s: float | None = None
    undone_s: float | None = None
    restored_s: float | None = None


def _pending(backend: Backend, changes: list[Change]) -> list[tuple[str, str, str]]:
    refs = sorted({(c.kind, c.namespace, c.name) for c in changes if c.kind in ROLLED_KINDS})
    return [r for r in refs if not backend.rolled_out(*r)]


def _roll(
    backend: Backend,
    changes: list[Change],
    *,
    timeout: float,
    poll: float,
    clock: Callable[[], float],
) -> list[str]:
    deadline = clock() + timeout
    while (left := _pending(backend, changes)) and clock() < deadline:
        time.sleep(poll)
    return [f"{k.lower()}/{n} -n {ns}" for k, ns, n in left]


def run(
    step: Step,
    *,
    backend: Backend,
    sample: Sampler,
    settings: Settings,
    echo: Echo,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    outcome = Outcome(step.id)
    before = watch.levels(
        watch.baseline(sample(settings.baseline_window_s), min_requests=settings.min_requests),
        sample(settings.window_s),
        min_requests=settings.min_requests,
    )
    if before:
        echo("success rates before the step: " + ", ".join(
            f"{w} {s.success_rate:.1%}" for w, s in sorted(before.items())
            if s.success_rate is not None))  # fmt: skip
    else:
        echo("no workload has enough traffic to judge the step by (nothing meshed yet?)")
    start = clock()
    for line in backend.apply(step.changes):
        echo(line)
    rolled_at: float | None = None
    while True:
        now = clock()
        found = watch.drops(before, sample(settings.window_s), tolerance=settings.tolerance,
                            min_requests=settings.min_requests)  # fmt: skip
        if found:
            outcome.detected_s = clock() - start
            outcome.drops = found
            for d in found:
                echo(f"dropped: {d}")
            break
        if rolled_at is None:
            if not _pending(backend, step.changes):
                rolled_at = clock()
                echo(f"rolled out after {rolled_at - start:.1f} s; watching for "
                     f"{settings.watch_s:.0f} s")  # fmt: skip
            elif now - start > settings.rollout_timeout_s:
                outcome.not_rolled_out = [
                    f"{k.lower()}/{n} -n {ns}" for k, ns, n in _pending(backend, step.changes)
                ]
                outcome.detected_s = clock() - start
                echo(f"not rolled out after {settings.rollout_timeout_s:.0f} s: "
                     f"{', '.join(outcome.not_rolled_out)}")  # fmt: skip
                break
        elif now - rolled_at >= settings.watch_s:
            echo(f"step {step.id} done: no workload's success rate dropped")
            return outcome
        time.sleep(settings.poll_s)
    outcome.rolled_back = True
    echo(f"rolling back step {step.id}")
    undo = step.undo()
    for line in backend.apply(undo):
        echo(line)
    outcome.undone_s = clock() - start
    left = _roll(backend, undo, timeout=settings.rollout_timeout_s, poll=settings.poll_s,
                 clock=clock)  # fmt: skip
    outcome.restored_s = clock() - start
    if left:
        echo(f"the rollback has not rolled out yet: {', '.join(left)}")
    echo(f"step {step.id} rolled back: drop seen {outcome.detected_s:.1f} s after the step, "
         f"old objects written at {outcome.undone_s:.1f} s, rolled out at "
         f"{outcome.restored_s:.1f} s")  # fmt: skip
    return outcome
