"""Golden metrics of every Deployment over time, for the deployment page's charts.

The public API answers "the last N seconds" only, so the dashboard samples Stat(deploy, all
namespaces, 10 s) every few seconds and keeps a bounded ring per Deployment: 15 minutes at the
default period, at most `max_series` Deployments (the least recently seen go first). One
sampler serves every browser; its query shares the coalescing cache with the pages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from dashboard.publicapi import PublicClient, Refused, Unreachable

log = logging.getLogger(__name__)

SAMPLE_WINDOW = 10  # seconds of traffic behind each point: the store's bucket
FIELDS = ("rps", "success_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms")


class History:
    def __init__(
        self,
        *,
        points: int = 180,
        max_series: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_points = points
        self.max_series = max_series
        self.clock = clock
        self._series: OrderedDict[tuple[str, str], deque[tuple[float, ...]]] = OrderedDict()

    def record(self, rows: list[dict[str, Any]]) -> None:
        now = self.clock()
        for r in rows:
            key = (r["namespace"], r["name"])
            ring = self._series.get(key)
            if ring is None:
                ring = self._series[key] = deque(maxlen=self.max_points)
            self._series.move_to_end(key)
            nan = float("nan")  # absent (no requests) is kept as a gap, not as zero
            ring.append((now, *(nan if r.get(f) is None else float(r[f]) for f in FIELDS)))
        while len(self._series) > self.max_series:
            self._series.popitem(last=False)

    def points(self, namespace: str, name: str) -> dict[str, list[float | None]]:
        ring = self._series.get((namespace, name), ())
        out: dict[str, list[float | None]] = {"t": [p[0] for p in ring]}
        for i, f in enumerate(FIELDS, start=1):
            out[f] = [None if p[i] != p[i] else p[i] for p in ring]  # NaN -> null in JSON
        return out

    async def sample_forever(self, client: PublicClient, *, period: float) -> None:
        failing = False
        while True:
            try:
                rows = await client.stat("deploy", all_namespaces=True, window=SAMPLE_WINDOW)
            except (Refused, Unreachable) as exc:
                # Normal while the control plane starts: say so once, then retry quietly.
                if not failing:
                    log.warning(
                        "%s; the charts' history waits for it (retrying every %gs)", exc, period
                    )
                else:
                    log.debug("history sample skipped: %s", exc)
                failing = True
            else:
                if failing:
                    log.info("control plane answers again at %s", client.target)
                failing = False
                self.record(rows)
            await asyncio.sleep(period)
