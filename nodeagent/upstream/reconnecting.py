"""One loop for the agent's long-lived streams to the control plane (tap, telemetry): run a
stream until it ends, say why at the right level, clean up, back off, open the next one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from nodeagent.upstream.channel import CallFailed
from nodemesh.backoff import Backoff


def agent_backoff() -> Backoff:
    """0.25 s doubling to 10 s, each delay drawn from its upper half (between d/2 and d)."""
    # Backoff draws from base * [1 - jitter, 1 + jitter]: 0.75 d * [2/3, 4/3] is [d/2, d].
    return Backoff(first=0.1875, factor=2.0, cap=7.5, jitter=1 / 3)


async def keep_streaming(
    name: str,
    stream: Callable[[], Awaitable[None]],
    *,
    progressed: Callable[[], bool],
    after: Callable[[], None],
    log: logging.Logger,
    backoff: Backoff | None = None,
) -> NoReturn:
    """Forever: `await stream()` (one stream's whole life), then `after()`, then wait. The wait
    starts over short when the stream `progressed()` (it was up and useful, not failing);
    failures are logged as a warning only then, else at debug level (a control plane that is
    away is not news on every retry)."""
    backoff = backoff or agent_backoff()
    while True:
        try:
            await stream()
        except CallFailed as exc:
            level = logging.WARNING if progressed() else logging.DEBUG
            log.log(level, "%s stream: %s %s", name, exc.code, exc.details)
        except (ValueError, OSError) as exc:
            log.error("%s stream: %s", name, exc)
        finally:
            after()
        if progressed():
            backoff.reset()
        await asyncio.sleep(backoff.delay())
