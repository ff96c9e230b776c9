"""The telemetry store: rolling 10 s buckets per series, kept 15 minutes, bounded (sans-io).

Interface: `TelemetryStore(clock=time.time, max_series=..., max_cells=...)`;
`ingest(parsed_report)` adds one report (deltas) to the bucket of the store's current time;
queries in controlplane.telemetry.query read `request_series`, `tcp_series`, `groups` (the same
cells summed per resource as they are written: controlplane.telemetry.groups) and `nodes`.
Memory is bounded twice: at most `max_cells` cells (series x bucket, plus resource x bucket of
the aggregates: `held_cells`), past which the oldest bucket of every series goes (`kept_from`
says from when the store is whole), and at most `max_series` series, past which the least
recently updated series is dropped whole; series dropped either way are counted in
`stats.series_evicted`. Buckets older than the retention go on their own. Measured cost: about
0.6 KB per series plus 0.5 KB per cell with 20 distinct latency buckets (an aggregate cell
costs as much), so the defaults (20k series, 400k cells) hold at most about 210 MB. At 10,000
pods (20,000 series and 12,500 resources reporting every second) that keeps 12 buckets: 2 min.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane.telemetry.groups import BUCKET_SECONDS as BUCKET_SECONDS
from controlplane.telemetry.groups import Attached, Groups
from controlplane.telemetry.report import ParsedReport, RequestKey, TcpCounts, TcpKey
from nodemesh.histogram import merge_into

RETENTION_SECONDS = 15 * 60


class RequestCell:
    __slots__ = ("start", "responses", "latency")

    def __init__(self, start: int) -> None:
        self.start = start
        self.responses = 0
        # A dict while the bucket runs; then a flat array of (index, count) pairs, which takes
        # less than half the memory: measured 1230 -> 520 bytes a cell with 20 buckets, keys
        # included, so 200k cells stay near 100 MB.
        self.latency: dict[int, int] | array[int] = {}

    def add_latency(self, counts: dict[int, int]) -> None:
        if not isinstance(self.latency, dict):
            self.latency = dict(zip(self.latency[::2], self.latency[1::2], strict=True))
        merge_into(self.latency, counts)

    def latency_into(self, target: dict[int, int]) -> None:
        if isinstance(self.latency, dict):
            merge_into(target, self.latency)
            return
        flat = self.latency
        for i in range(0, len(flat), 2):
            target[flat[i]] = target.get(flat[i], 0) + flat[i + 1]

    def seal(self) -> None:
        if isinstance(self.latency, dict):
            flat = array("Q")
            for index in sorted(self.latency):
                flat.append(index)
                flat.append(self.latency[index])
            self.latency = flat


class TcpCell:
    __slots__ = (
        "start",
        "opened",
        "closed",
        "read_bytes",
        "write_bytes",
        "open_connections",
        "authz_denied",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.opened = self.closed = self.read_bytes = self.write_bytes = 0
        self.authz_denied = 0
        self.open_connections = 0  # gauge: the last value reported in this bucket

    def seal(self) -> None:
        pass


@dataclass
class NodeState:
    node: str
    version: str = ""
    last_report: float = 0.0
    pods_enrolled: int = 0
    open_connections: int = 0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    cpu_cores: float = 0.0  # CPU seconds per second between the last two reports
    reports: int = 0
    # (namespace, name, uid) of the pods the agent said it had enrolled, in its last report.
    enrolled: frozenset[tuple[str, str, str]] = frozenset()


@dataclass
class StoreStats:
    reports: int = 0
    series_evicted: int = 0
    cells_expired: int = 0


K = TypeVar("K")
C = TypeVar("C", RequestCell, TcpCell)


class Series(list[C]):
    """A series' cells, oldest first (a list, not a deque: an empty deque costs 600 bytes,
    and at most 91 cells make trimming the front cheap anyway), with the aggregates it feeds."""

    __slots__ = ("groups",)

    def __init__(self, groups: Attached) -> None:
        super().__init__()
        self.groups = groups


@dataclass
class TelemetryStore:
    clock: Callable[[], float] = time.time
    max_series: int = 20_000
    max_cells: int = 400_000
    max_nodes: int = 10_000
    request_series: OrderedDict[RequestKey, Series[RequestCell]] = field(
        default_factory=OrderedDict
    )
    tcp_series: OrderedDict[TcpKey, Series[TcpCell]] = field(default_factory=OrderedDict)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    # The same cells summed per resource as they are written (a plain Stat reads these).
    groups: Groups = field(default_factory=Groups)
    stats: StoreStats = field(default_factory=StoreStats)
    cells: int = 0
    # Buckets before this were dropped to stay within max_cells (queries cover less then).
    kept_from: int = 0
    _expired_through: int = -1

    @staticmethod
    def bucket_start(t: float) -> int:
        return int(t // BUCKET_SECONDS) * BUCKET_SECONDS

    def ingest(self, report: ParsedReport) -> None:
        now = self.clock()
        start = self.bucket_start(now)
        if start != self._expired_through:
            self.expire(now)
        self.stats.reports += 1
        self._note_node(report, now)
        groups = self.groups
        for key, responses, latency in report.requests:
            series = self._series(self.request_series, key)
            if series and series[-1].start == start:
                cell = series[-1]
            else:
                cell = self._open(series, RequestCell(start))
                groups.join_request(
                    series.groups, cell, success=key.success, denied=bool(key.authz)
                )
            cell.responses += responses
            cell.add_latency(latency.counts)
        for tkey, counts in report.tcp:
            tseries = self._series(self.tcp_series, tkey)
            if tseries and tseries[-1].start == start:
                tcell = tseries[-1]
            else:
                tcell = self._open(tseries, TcpCell(start))
                groups.join_tcp(tseries.groups, tseries, tcell)
            self._add_tcp(tcell, counts)
        self._enforce_bounds()

    @staticmethod
    def _add_tcp(cell: TcpCell, counts: TcpCounts) -> None:
        cell.opened += counts.opened
        cell.closed += counts.closed
        cell.read_bytes += counts.read_bytes
        cell.write_bytes += counts.write_bytes
        cell.open_connections = counts.open_connections
        cell.authz_denied += counts.authz_denied

    def _series(self, table: OrderedDict[K, Series[C]], key: K) -> Series[C]:
        cells = table.get(key)
        if cells is None:
            cells = table[key] = Series(self.groups.attach(key))  # type: ignore[arg-type]
        else:
            table.move_to_end(key)  # most recently updated last: eviction takes the front
        return cells

    def _open(self, cells: Series[C], cell: C) -> C:
        """Start the series' cell of the running bucket (its previous one is complete)."""
        if cells:
            cells[-1].seal()
        cells.append(cell)
        self.cells += 1
        return cell

    def _note_node(self, report: ParsedReport, now: float) -> None:
        state = self.nodes.get(report.node)
        if state is None:
            if len(self.nodes) >= self.max_nodes:
                oldest = min(self.nodes.values(), key=lambda s: s.last_report)
                del self.nodes[oldest.node]
            state = self.nodes[report.node] = NodeState(report.node)
        load = report.load
        elapsed = now - state.last_report
        if state.reports and elapsed > 0 and load.cpu_seconds >= state.cpu_seconds:
            state.cpu_cores = (load.cpu_seconds - state.cpu_seconds) / elapsed
        state.version = report.version
        state.last_report = now
        state.pods_enrolled = load.pods_enrolled
        state.open_connections = load.open_connections
        state.cpu_seconds = load.cpu_seconds
        state.rss_bytes = load.rss_bytes
        state.enrolled = frozenset((p.namespace, p.name, p.uid) for p in load.enrolled_pods)
        state.reports += 1

    @property
    def held_cells(self) -> int:
        """Cells of series and of the per-resource aggregates: what `max_cells` bounds."""
        return self.cells + self.groups.cells

    def _enforce_bounds(self) -> None:
        # Too many cells: the oldest bucket goes, for every series, so every series keeps its
        # recent past whole. (Dropping whole series instead, when every series reports every
        # second, dropped series that came straight back: 176,631 evictions in a minute at
        # 20,000 series, each taking its last minute with it.)
        while self.held_cells > self.max_cells and self._trim_oldest_bucket():
            pass
        while self.request_series or self.tcp_series:
            series = len(self.request_series) + len(self.tcp_series)
            if series <= self.max_series and self.held_cells <= self.max_cells:
                return
            self._evict_oldest()

    def _trim_oldest_bucket(self) -> bool:
        """Drop the oldest complete bucket of every series; False if there is none to drop."""
        current = self.bucket_start(self.clock())
        tables: list[OrderedDict[Any, Any]] = [self.request_series, self.tcp_series]
        oldest = min((c[0].start for t in tables for c in t.values() if c), default=current)
        if oldest >= current:
            return False
        cut = oldest + BUCKET_SECONDS
        series = len(self.request_series) + len(self.tcp_series)
        self._expire_table(self.request_series, cut, current)
        self._expire_table(self.tcp_series, cut, current)
        self.groups.expire(cut, current)
        self.stats.series_evicted += series - len(self.request_series) - len(self.tcp_series)
        self.kept_from = max(self.kept_from, cut)
        return True

    def _evict_oldest(self) -> None:
        # Compare the least recently updated series of both tables and drop the older one.
        req = next(iter(self.request_series.items()), None)
        tcp = next(iter(self.tcp_series.items()), None)
        if tcp is None or (req is not None and req[1][-1].start <= tcp[1][-1].start):
            assert req is not None
            self.cells -= len(self.request_series.pop(req[0]))
            self.groups.forget(req[0], req[1].groups, list(req[1]))
            self.groups.detach(req[0], req[1].groups)
        else:
            self.cells -= len(self.tcp_series.pop(tcp[0]))
            self.groups.forget(tcp[0], tcp[1].groups, list(tcp[1]))
            self.groups.detach(tcp[0], tcp[1].groups)
        self.stats.series_evicted += 1

    def expire(self, now: float | None = None) -> None:
        """Drop buckets older than the retention (15 min of complete buckets + the current one)."""
        start = self.bucket_start(self.clock() if now is None else now)
        oldest = start - RETENTION_SECONDS
        self._expire_table(self.request_series, oldest, start)
        self._expire_table(self.tcp_series, oldest, start)
        self.groups.expire(oldest, start)
        self._expired_through = start

    def _expire_table(self, table: OrderedDict[K, Series[C]], oldest: int, current: int) -> None:
        for key in list(table):
            cells = table[key]
            if cells and cells[-1].start < current:
                cells[-1].seal()  # a series that went quiet: its last bucket is complete
            stale = 0
            while stale < len(cells) and cells[stale].start < oldest:
                stale += 1
            if stale:
                del cells[:stale]
                self.cells -= stale
                self.stats.cells_expired += stale
            if not cells:
                del table[key]
                self.groups.detach(key, cells.groups)  # type: ignore[arg-type]
