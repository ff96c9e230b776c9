"""The agent's traffic aggregate: one series per label set, fed per event (sans-io, no I/O).

Each request series holds running totals for /metrics (count, latency in Linkerd's fixed
millisecond buckets, latency sum) and a pending delta for the next telemetry report (count and a
`nodemesh.histogram` log-linear histogram), so one event costs a dict lookup and a few
increments; everything else (labels, merging, protobuf) happens on scrape or report.

Events arrive keyed by the data plane's `Peer` objects, which carry IPs. Series are kept per
peer *without* the IP, so clients outside the mesh (one IP each) share a series: a miss maps the
event's key to that canonical series and remembers the mapping in a bounded alias table.

Bounds: at most `max_series` request series and as many TCP series. At the cap, series idle for
a report with nothing pending and no open connection go first; if none can go, the event is
dropped and counted in `dropped`.

Pods come and go: `forget_gone(known, now=..., grace=...)` drops the series of a pod (either
end) once the destination table has not known it for `grace` seconds, so a churning Deployment
does not grow /metrics and the heap for ever. The grace lets Prometheus scrape the series' last
values first; a series still holding an unreported delta or an open connection stays until
both are gone.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections.abc import Container
from typing import Any

from nodeagent.observe.events import Peer, RequestObserved, TcpClosed, TcpOpened
from nodeagent.observe.stats.denials import Denials
from nodeagent.observe.stats.routes import RouteStats
from nodemesh.histogram import EXACT_BELOW, MAX_VALUE_US, SUB_BUCKET_BITS, SUB_BUCKETS

# Linkerd's response_latency_ms buckets (upper bounds, ms); +Inf is the extra last slot.
LATENCY_BOUNDS_MS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
    1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000,
)  # fmt: skip
# In microseconds: Prometheus `le` is inclusive, and bisect_left puts a value equal to a bound
# in that bound's slot.
_BOUNDS_US: tuple[int, ...] = tuple(b * 1000 for b in LATENCY_BOUNDS_MS)

_MANTISSA_BITS = SUB_BUCKET_BITS + 1
DEFAULT_MAX_SERIES = 10_000
MAX_ALIASES = 50_000
# A series that saw nothing for this many reports (and has no open connection) may be dropped.
IDLE_GENERATIONS = 600
# Seconds a gone pod's series stay on /metrics: two scrapes at Prometheus' default 1m interval
# (twelve at the 10 s the bundled Prometheus uses), so the last values are always scraped.
GONE_POD_GRACE = 120.0
PodRef = tuple[str, str]  # (namespace, name)


class RequestSeries:
    __slots__ = (
        "direction", "src", "dst", "protocol", "tls", "authority", "status", "grpc_status",
        "success", "count", "sum_us", "buckets", "pending", "pending_count", "pending_sum_us",
        "generation",
    )  # fmt: skip

    def __init__(self, key: tuple[Any, ...], generation: int) -> None:
        (
            self.direction, self.src, self.dst, self.protocol, self.tls, self.authority,
            self.status, self.grpc_status, classification,
        ) = key  # fmt: skip
        self.success: bool = classification == "success"
        self.count = 0
        self.sum_us = 0
        self.buckets = [0] * (len(_BOUNDS_US) + 1)
        self.pending: dict[int, int] = {}
        self.pending_count = 0
        self.pending_sum_us = 0
        self.generation = generation


class TcpSeries:
    __slots__ = (
        "direction", "src", "dst", "tls", "opened", "closed", "read_bytes", "write_bytes",
        "open", "p_opened", "p_closed", "p_read", "p_write", "generation",
    )  # fmt: skip

    def __init__(self, key: tuple[Any, ...], generation: int) -> None:
        self.direction, self.src, self.dst, self.tls = key
        self.opened = self.closed = self.read_bytes = self.write_bytes = self.open = 0
        self.p_opened = self.p_closed = self.p_read = self.p_write = 0
        self.generation = generation

    @property
    def has_pending(self) -> bool:
        return bool(self.p_opened or self.p_closed or self.p_read or self.p_write)


def _anonymous(peer: Peer) -> Peer:
    return dataclasses.replace(peer, ip="") if peer.ip else peer


class Aggregate:
    """Counters and histograms of this agent's traffic, by series."""

    def __init__(self, *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self.generation = 0  # bumped by each report; series note the last one they saw
        self.requests: dict[tuple[Any, ...], RequestSeries] = {}  # canonical key -> series
        self.tcp: dict[tuple[Any, ...], TcpSeries] = {}
        # (peer ids, other key fields) -> (src peer, dst peer, series); see request().
        self._req_alias: dict[tuple[Any, ...], tuple[Peer, Peer, RequestSeries]] = {}
        self._tcp_alias: dict[tuple[Any, ...], tuple[Peer, Peer, TcpSeries]] = {}
        self._conns: dict[int, TcpSeries] = {}
        self.open_connections = 0
        self.dropped = 0
        # Pods a series names that the table no longer knows -> when that was first seen.
        self._gone_since: dict[PodRef, float] = {}
        self.forgotten = 0  # series dropped because their pod went away
        self.denials = Denials()  # what the destination's policy refused (not proxied)
        self.routes = RouteStats(bounds_us=_BOUNDS_US)  # the client's L7 path, by route

    # --- the hot path ---------------------------------------------------------------------

    def request(self, ev: RequestObserved) -> None:
        src, dst = ev.src, ev.dst
        # Keyed by the peers' ids, not their contents: hashing two dataclasses would cost more
        # than all the rest. The alias entry holds the peers, so an id cannot be reused while
        # its entry exists, and the `is` checks make a stale entry a miss.
        key = (
            id(src), id(dst), ev.direction, ev.protocol, ev.tls, ev.authority, ev.status,
            ev.grpc_status, ev.classification,
        )  # fmt: skip
        hit = self._req_alias.get(key)
        s: RequestSeries | None
        if hit is not None and hit[0] is src and hit[1] is dst:
            s = hit[2]
        else:
            s = self._request_series(key, ev)
            if s is None:
                return
        latency = ev.latency_first_byte_s
        if latency is None:
            latency = ev.latency_s
        # Rounded, not truncated: 0.003 s is 2999.9999... us in binary floating point.
        us = int(latency * 1_000_000 + 0.5) if latency > 0 else 0
        s.count += 1
        s.sum_us += us
        s.buckets[bisect_left(_BOUNDS_US, us)] += 1
        # nodemesh.histogram.bucket_index, inlined (a call costs as much as the rest here).
        if us < EXACT_BELOW:
            index = us
        else:
            if us > MAX_VALUE_US:
                us = MAX_VALUE_US
            shift = us.bit_length() - _MANTISSA_BITS
            index = SUB_BUCKETS * shift + (us >> shift)
        pending = s.pending
        pending[index] = pending.get(index, 0) + 1
        s.pending_count += 1
        s.pending_sum_us += us
        s.generation = self.generation

    def tcp_opened(self, ev: TcpOpened) -> None:
        s = self._tcp_series(ev.direction, ev.src, ev.dst, ev.tls)
        if s is None:
            return
        s.opened += 1
        s.p_opened += 1
        s.open += 1
        s.generation = self.generation
        self._conns[ev.conn_id] = s
        self.open_connections += 1

    def tcp_closed(self, ev: TcpClosed) -> None:
        # The series of the open event, even if the data plane learnt more about a peer since.
        s = self._conns.pop(ev.conn_id, None)
        if s is not None:
            s.open -= 1
            self.open_connections -= 1
        else:
            s = self._tcp_series(ev.direction, ev.src, ev.dst, ev.tls)
            if s is None:
                return
        s.closed += 1
        s.p_closed += 1
        s.read_bytes += ev.read_bytes
        s.p_read += ev.read_bytes
        s.write_bytes += ev.write_bytes
        s.p_write += ev.write_bytes
        s.generation = self.generation

    # --- misses ---------------------------------------------------------------------------

    def _request_series(self, key: tuple[Any, ...], ev: RequestObserved) -> RequestSeries | None:
        canonical = (ev.direction, _anonymous(ev.src), _anonymous(ev.dst), *key[3:])
        s = self.requests.get(canonical)
        if s is None:
            if len(self.requests) >= self.max_series and not self._evict(self.requests):
                self.dropped += 1
                return None
            s = self.requests[canonical] = RequestSeries(canonical, self.generation)
        self._alias(self._req_alias, key, (ev.src, ev.dst, s))
        return s

    def _tcp_series(self, direction: str, src: Peer, dst: Peer, tls: bool) -> TcpSeries | None:
        key = (id(src), id(dst), direction, tls)
        hit = self._tcp_alias.get(key)
        if hit is not None and hit[0] is src and hit[1] is dst:
            return hit[2]
        canonical = (direction, _anonymous(src), _anonymous(dst), tls)
        s = self.tcp.get(canonical)
        if s is None:
            if len(self.tcp) >= self.max_series and not self._evict(self.tcp):
                self.dropped += 1
                return None
            s = self.tcp[canonical] = TcpSeries(canonical, self.generation)
        self._alias(self._tcp_alias, key, (src, dst, s))
        return s

    @staticmethod
    def _alias(table: dict[tuple[Any, ...], Any], key: tuple[Any, ...], s: Any) -> None:
        if len(table) >= MAX_ALIASES:
            table.clear()  # the canonical series stay; live keys are re-learnt on their next miss
        table[key] = s

    def _evict(self, table: dict[tuple[Any, ...], Any]) -> bool:
        """Drop the longest-idle series with nothing to report; False when none qualifies."""
        best_key, best_gen = None, self.generation
        for key, s in table.items():
            if s.generation < best_gen and _reported(s):
                best_key, best_gen = key, s.generation
        if best_key is None:
            return False
        self._forget(table, best_key)
        return True

    def _forget(self, table: dict[tuple[Any, ...], Any], key: tuple[Any, ...]) -> None:
        gone = table.pop(key)
        aliases = self._req_alias if table is self.requests else self._tcp_alias
        for alias in [k for k, v in aliases.items() if v[2] is gone]:
            del aliases[alias]

    def _forget_many(self, table: dict[tuple[Any, ...], Any], keys: list[tuple[Any, ...]]) -> None:
        """`_forget` for many keys with one pass over the alias table."""
        if not keys:
            return
        gone = {id(table.pop(key)) for key in keys}
        aliases = self._req_alias if table is self.requests else self._tcp_alias
        for alias in [k for k, v in aliases.items() if id(v[2]) in gone]:
            del aliases[alias]

    def expire_idle(self, *, idle_generations: int = IDLE_GENERATIONS) -> int:
        """Drop series idle for `idle_generations` reports (pods come and go); returns how many."""
        oldest = self.generation - idle_generations
        dropped = 0
        for table in (self.requests, self.tcp):
            for key in [k for k, s in table.items() if s.generation < oldest and _reported(s)]:
                self._forget(table, key)
                dropped += 1
        return dropped

    def forget_gone(self, known: Container[PodRef], *, now: float, grace: float) -> int:
        """Drop the series of pods that have not been in `known` (namespace, name) for `grace`
        seconds (at either end; a peer without a pod name, outside the mesh, is never gone).
        Returns how many series went."""
        named: set[PodRef] = set()
        for table in (self.requests, self.tcp):
            for s in table.values():
                if s.src.pod:
                    named.add((s.src.namespace, s.src.pod))
                if s.dst.pod:
                    named.add((s.dst.namespace, s.dst.pod))
        named |= self.routes.clients()
        gone_since = {}
        for ref in named:
            if ref not in known:
                gone_since[ref] = self._gone_since.get(ref, now)
        # Pods that came back, or whose series all went, are forgotten here too.
        self._gone_since = gone_since
        expired = {ref for ref, since in gone_since.items() if now - since >= grace}
        if not expired:
            return 0
        dropped = self.routes.forget(expired)
        for table in (self.requests, self.tcp):
            doomed = [
                key
                for key, s in table.items()
                if _reported(s)
                and (
                    (s.src.namespace, s.src.pod) in expired
                    or (s.dst.namespace, s.dst.pod) in expired
                )
            ]
            self._forget_many(table, doomed)
            dropped += len(doomed)
        self.forgotten += dropped
        return dropped


def _reported(s: RequestSeries | TcpSeries) -> bool:
    if isinstance(s, RequestSeries):
        return s.pending_count == 0
    return s.open == 0 and not s.has_pending
