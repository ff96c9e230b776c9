"""Questions asked of the telemetry store: stat per resource, edges, agents (pure functions).

Interface:
- `Resource(kind, namespace="", name="")`; any kind nodemesh.kinds knows (canonicalised there:
  deployment, pod, namespace, service, node; anything else raises UnknownResourceKind); empty
  namespace/name mean "all".
- `stat(store, resource, from_=None, to=None, window_s=60, include_current=False)`
  -> list[StatRow], one per resource that had traffic in the window (the public API adds the
  idle ones it knows from the index). Which series count:
    no --from/--to: inbound series, grouped by destination (what the resource served);
    svc: outbound series by the Service the clients addressed;
    node: everything the node's agent reported, both directions;
    --to Y: outbound series from the resource to Y; --from Y: outbound series from Y to it
    (the client's view, as Linkerd does; node cannot be used in --from/--to).
  The window is the requested seconds rounded up to whole 10 s buckets; `include_current`
  adds the running bucket, so what agents reported a second ago counts at once, and the
  window then covers between the requested seconds and 10 s more. Rates divide by the
  seconds the window really covers (`StatRow.window_s`), never by the requested ones.
  TCP_CONN is a gauge: the newest value each series reported, counted only while it is
  fresh (reported in the running or the previous bucket), whatever the window.
  Without --from/--to the rows come from the store's per-resource aggregates (the complete
  buckets' sums kept per kind and window until a bucket changes, plus the running bucket);
  with them, from a walk over every series.
- `plain_traffic(store, resource, window_s=60, include_current=False, quantiles=...)`: what
  a plain `stat` finds, as one `PlainTraffic` tuple per (namespace, name) with the quantiles
  read (the telemetry worker's Stat answer: controlplane.stat_answer).
- `edges(store, namespace="", window_s=60)` -> list[Edge] between Deployments (pods without
  one stand for themselves), with identities seen and whether every connection had mTLS; from
  the store's edge aggregates, not from every series.
- `nodes(store)` -> list[NodeState]: each agent's version, load and last report time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane.telemetry.groups import EDGE, GroupCell, GroupSeries
from controlplane.telemetry.report import Peer, RequestKey, TcpKey
from controlplane.telemetry.store import (
    BUCKET_SECONDS,
    RETENTION_SECONDS,
    NodeState,
    RequestCell,
    TcpCell,
    TelemetryStore,
)
from nodemesh import kinds
from nodemesh.histogram import quantile, quantiles, quantiles_ms

_Cell = TypeVar("_Cell", RequestCell, TcpCell, GroupCell)
UnknownResourceKind = kinds.UnknownKind


class InvalidQuery(ValueError):
    pass


@dataclass(frozen=True)
class Resource:
    kind: str
    namespace: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", kinds.canonical(self.kind))


@dataclass
class StatRow:
    kind: str
    namespace: str
    name: str
    window_s: float
    success: int = 0
    failure: int = 0
    latency: dict[int, int] = field(default_factory=dict, repr=False)
    tcp_open_connections: int = 0
    tcp_opened: int = 0
    tcp_closed: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    authz_denied: int = 0  # requests and connections the destination's policy denied
    # Quantiles computed where the histogram lives in other buckets (Prometheus' `le` buckets,
    # --prometheus-url): answered instead of `latency`'s.
    known_latency_ms: dict[float, float | None] | None = field(default=None, repr=False)

    @property
    def requests(self) -> int:
        return self.success + self.failure

    @property
    def success_rate(self) -> float | None:
        return self.success / self.requests if self.requests else None

    @property
    def rps(self) -> float:
        return self.requests / self.window_s

    def latency_ms(self, q: float) -> float | None:
        if self.known_latency_ms is not None:
            return self.known_latency_ms.get(q)
        us = quantile(self.latency, q)
        return None if us is None else us / 1000

    def latencies_ms(self, *qs: float) -> list[float | None]:
        """Several quantiles at once (one pass: 10,000 rows x 3 quantiles add up)."""
        if self.known_latency_ms is not None:
            return [self.known_latency_ms.get(q) for q in qs]
        return [None if us is None else us / 1000 for us in quantiles(self.latency, qs)]

    @property
    def read_bytes_per_s(self) -> float:
        return self.read_bytes / self.window_s

    @property
    def write_bytes_per_s(self) -> float:
        return self.write_bytes / self.window_s


def _name_of(kind: str, peer: Peer) -> tuple[str, str] | None:
    """(namespace, name) of `peer` as a resource of `kind`, or None if it has none."""
    if kind == "deployment":
        return (peer.namespace, peer.deployment) if peer.deployment else None
    if kind == "pod":
        return (peer.namespace, peer.pod) if peer.pod else None
    if kind == "namespace":
        return ("", peer.namespace) if peer.namespace else None
    if kind == "service":
        return (peer.namespace, peer.service) if peer.service else None
    raise InvalidQuery(f"{kind} cannot be matched against a peer")


def _matches(resource: Resource, found: tuple[str, str] | None) -> bool:
    if found is None:
        return False
    namespace, name = found
    if resource.namespace and resource.kind != "namespace" and namespace != resource.namespace:
        return False
    return not resource.name or name == resource.name


def _row_of(
    key: RequestKey | TcpKey, resource: Resource, from_: Resource | None, to: Resource | None
) -> tuple[str, str] | None:
    """Which row of the answer the series `key` counts towards, if any."""
    if resource.kind == "node":
        found: tuple[str, str] | None = ("", key.node)
    elif to is not None:
        if key.direction != "outbound" or not _matches(to, _name_of(to.kind, key.dst)):
            return None
        found = _name_of(resource.kind, key.src)
    elif from_ is not None or resource.kind == "service":
        if key.direction != "outbound":
            return None
        if from_ is not None and not _matches(from_, _name_of(from_.kind, key.src)):
            return None
        found = _name_of(resource.kind, key.dst)
    else:
        if key.direction != "inbound":
            return None
        found = _name_of(resource.kind, key.dst)
    return found if _matches(resource, found) else None


def _window(
    store: TelemetryStore, window_s: float, include_current: bool
) -> tuple[int, int, float]:
    """[first, last) bucket starts to read, and the seconds they cover."""
    if not BUCKET_SECONDS <= window_s <= RETENTION_SECONDS:
        raise InvalidQuery(f"window must be between {BUCKET_SECONDS}s and {RETENTION_SECONDS}s")
    buckets = math.ceil(window_s / BUCKET_SECONDS)
    now = store.clock()
    current = store.bucket_start(now)
    # What the store dropped to stay within its memory bound is not covered.
    first = max(current - buckets * BUCKET_SECONDS, min(store.kept_from, current))
    if include_current:
        return first, current + BUCKET_SECONDS, max(now - first, 1e-9)
    return first, current, max(current - first, 1e-9)


def stat(
    store: TelemetryStore,
    resource: Resource,
    *,
    from_: Resource | None = None,
    to: Resource | None = None,
    window_s: float = 60,
    include_current: bool = False,
) -> list[StatRow]:
    if from_ is not None and to is not None:
        raise InvalidQuery("use --from or --to, not both")
    if (from_ is not None and from_.kind == "node") or (to is not None and to.kind == "node"):
        raise InvalidQuery("node cannot be used with --from/--to")
    if to is not None and resource.kind == "service":
        raise InvalidQuery("svc has no outbound traffic of its own; use --from")
    first, last, seconds = _window(store, window_s, include_current)
    # Agents report every open series each second: an older gauge is of an agent gone quiet.
    fresh_from = store.bucket_start(store.clock()) - BUCKET_SECONDS
    if from_ is None and to is None:
        rows = _from_groups(store, resource, first, last, seconds, fresh_from)
    else:
        rows = _scan(store, resource, from_, to, first, last, seconds, fresh_from)
    return sorted(rows.values(), key=lambda r: (r.namespace, r.name))


def _from_groups(
    store: TelemetryStore, resource: Resource, first: int, last: int, seconds: float,
    fresh_from: int,
) -> dict[tuple[str, str], StatRow]:  # fmt: skip
    """A plain Stat from the store's per-resource aggregates (controlplane.telemetry.groups):
    the same rows `_scan` finds, from a few cells per resource instead of every series."""
    wanted = _wanted(store, resource)
    current = store.bucket_start(store.clock())
    sealed = _sealed_sums(store, resource.kind, first, min(current, last))
    rows: dict[tuple[str, str], StatRow] = {}
    for found, cells in wanted:
        if not _matches(resource, found):
            continue
        base = sealed.get(found)
        r: StatRow | None = None
        if base is not None:
            r = rows[found] = StatRow(
                resource.kind, found[0], found[1], seconds, base.success, base.failure,
                dict(base.latency), 0, base.tcp_opened, base.tcp_closed, base.read_bytes,
                base.write_bytes, base.authz_denied,
            )  # fmt: skip
        for cell in _in_window(cells, max(first, current), last):  # the running bucket
            if r is None:
                r = rows[found] = StatRow(resource.kind, found[0], found[1], seconds)
            cell.add_into(r)
        gauge = 0
        for cell in reversed(cells):
            if cell.start < fresh_from:
                break
            gauge += cell.gauge()
        if gauge:
            if r is None:
                r = rows[found] = StatRow(resource.kind, found[0], found[1], seconds)
            r.tcp_open_connections += gauge
    return rows


# A plain Stat's row as `plain_traffic` gives it: (covered seconds, success, failure, open
# connections, read bytes, write bytes, denied, then each quantile asked in ms or None).
PlainTraffic = tuple[Any, ...]


class _Sum:
    """The counts of the row being summed: one for a whole `plain_traffic`, reset per row."""

    __slots__ = (
        "success", "failure", "authz_denied", "latency", "tcp_opened", "tcp_closed",
        "read_bytes", "write_bytes",
    )  # fmt: skip

    success: int
    failure: int
    authz_denied: int
    latency: dict[int, int]
    tcp_opened: int
    tcp_closed: int
    read_bytes: int
    write_bytes: int


def plain_traffic(
    store: TelemetryStore,
    resource: Resource,
    *,
    window_s: float = 60,
    include_current: bool = False,
    quantiles: tuple[float, ...] = (0.5, 0.95, 0.99),
) -> dict[tuple[str, str], PlainTraffic]:
    """What `stat(store, resource, window_s=, include_current=)` (no --from/--to) finds, as one
    plain tuple per (namespace, name) with the latency quantiles already read (`PlainTraffic`):
    the rows the telemetry worker turns into a Stat answer (controlplane.stat_answer). One pass
    over the resources, no StatRow nor histogram kept per row (`_from_groups` made both for
    10,000 rows before the answer's pass read them: half of a cold Stat pod's work)."""
    first, last, seconds = _window(store, window_s, include_current)
    current = store.bucket_start(store.clock())
    fresh_from = current - BUCKET_SECONDS
    sealed = _sealed_sums(store, resource.kind, first, min(current, last))
    running_from = max(first, current)
    picky = bool(resource.namespace or resource.name)
    acc = _Sum()  # the running bucket's cells already summed (none while it runs)
    out: dict[tuple[str, str], PlainTraffic] = {}
    # The running bucket's members are summed here, inline (GroupCell.add_into's running
    # branch, GroupCell.gauge): four calls a row over 10,000 rows took ~10 ms of a cold Stat.
    for found, cells in _wanted(store, resource):
        if picky and not _matches(resource, found):
            continue
        base = sealed.get(found)
        if base is None:
            success = failure = denied = read = write = 0
            latency: dict[int, int] = {}
        else:
            success, failure, denied = base.success, base.failure, base.authz_denied
            read, write = base.read_bytes, base.write_bytes
            latency = base.latency.copy()
        seen = base is not None
        gauge = 0
        for cell in reversed(cells):  # newest first: the running bucket, then the fresh one
            start = cell.start
            if start < fresh_from:
                break
            conns = cell.conns
            if conns:
                for series, c in conns:
                    if series[-1] is c:
                        gauge += c.open_connections
            if start < running_from or start >= last:
                continue
            seen = True
            requests = cell.requests
            if requests is None:  # complete already (the store has not begun a new bucket)
                acc.success = acc.failure = acc.authz_denied = acc.read_bytes = 0
                acc.write_bytes = acc.tcp_opened = acc.tcp_closed = 0
                acc.latency = latency
                cell.add_into(acc)
                success += acc.success
                failure += acc.failure
                denied += acc.authz_denied
                read += acc.read_bytes
                write += acc.write_bytes
                continue
            for ok, refused, member in requests:
                n = member.responses
                if ok:
                    success += n
                else:
                    failure += n
                if refused:
                    denied += n
                held = member.latency
                if type(held) is dict:
                    for index, count in held.items():
                        latency[index] = latency.get(index, 0) + count
                else:
                    member.latency_into(latency)
            for _, c in conns or ():
                read += c.read_bytes
                write += c.write_bytes
                denied += c.authz_denied
        if not seen and not gauge:
            continue
        out[found] = (
            seconds, success, failure, gauge, read, write, denied,
            *quantiles_ms(latency, quantiles),
        )  # fmt: skip
    return out


def _wanted(
    store: TelemetryStore, resource: Resource
) -> Iterable[tuple[tuple[str, str], GroupSeries]]:
    table = store.groups.by_kind[resource.kind]
    if resource.name and (resource.namespace or resource.kind in ("namespace", "node")):
        key = ("" if resource.kind in ("namespace", "node") else resource.namespace, resource.name)
        return [(key, table[key])] if key in table else []
    return table.items()


def prepare_stat(store: TelemetryStore, of_kinds: Iterable[str], window_s: float) -> None:
    """Sum the complete buckets a plain `stat(kind, window_s=window_s, include_current=True)`
    reads now, for each of `of_kinds`, as its first call would (`_sealed_sums`): kept until a
    bucket changes."""
    first, last, _ = _window(store, window_s, include_current=True)
    current = store.bucket_start(store.clock())
    for kind in of_kinds:
        _sealed_sums(store, kinds.canonical(kind), first, min(current, last))


def _sealed_sums(
    store: TelemetryStore, kind: str, first: int, last: int
) -> dict[tuple[str, str], StatRow]:
    """Every resource of `kind` summed over the complete buckets [first, last): computed once
    while those buckets stay as they are (a new bucket, an eviction or a trim changes them), so
    a Stat over 10,000 pods sums 6 buckets of each once per 10 s, not once per call."""
    groups = store.groups
    key = (kind, first, last)
    held = groups.sealed_sums.get(key)
    if held is not None and held[0] == groups.generation:
        return held[1]  # type: ignore[return-value]
    sums: dict[tuple[str, str], StatRow] = {}
    for found, cells in groups.by_kind[kind].items():
        r: StatRow | None = None
        for cell in _in_window(cells, first, last):
            if r is None:
                r = sums[found] = StatRow(kind, found[0], found[1], 0)
            cell.add_into(r)
    if any(g != groups.generation for g, _ in groups.sealed_sums.values()):
        groups.sealed_sums.clear()
    if len(groups.sealed_sums) >= 16:  # kinds x windows asked lately
        groups.sealed_sums.pop(next(iter(groups.sealed_sums)))
    groups.sealed_sums[key] = (groups.generation, sums)  # type: ignore[assignment]
    return sums


def _scan(
    store: TelemetryStore, resource: Resource, from_: Resource | None, to: Resource | None,
    first: int, last: int, seconds: float, fresh_from: int,
) -> dict[tuple[str, str], StatRow]:  # fmt: skip
    """Stat by walking every series (what --from/--to need: the groups hold one end only)."""
    rows: dict[tuple[str, str], StatRow] = {}

    def row(found: tuple[str, str]) -> StatRow:
        if found not in rows:
            rows[found] = StatRow(resource.kind, found[0], found[1], seconds)
        return rows[found]

    for key, cells in store.request_series.items():
        if key.route:
            continue  # the L7 path's view of requests the relay observed too (routes.py)
        found = _row_of(key, resource, from_, to)
        if found is None:
            continue
        for cell in _in_window(cells, first, last):
            r = row(found)
            if key.success:
                r.success += cell.responses
            else:
                r.failure += cell.responses
            if key.authz:
                r.authz_denied += cell.responses
            cell.latency_into(r.latency)
    for tkey, tcells in store.tcp_series.items():
        found = _row_of(tkey, resource, from_, to)
        if found is None:
            continue
        for tcell in _in_window(tcells, first, last):
            r = row(found)
            r.tcp_opened += tcell.opened
            r.tcp_closed += tcell.closed
            r.read_bytes += tcell.read_bytes
            r.write_bytes += tcell.write_bytes
            r.authz_denied += tcell.authz_denied
        newest = tcells[-1] if tcells else None
        if newest is not None and newest.start >= fresh_from and newest.open_connections:
            row(found).tcp_open_connections += newest.open_connections
    return rows


def _in_window(cells: list[_Cell], first: int, last: int) -> Iterator[_Cell]:
    # Newest cells are at the right; walk back and stop at the first one before the window.
    for cell in reversed(cells):
        if cell.start < first:
            return
        if cell.start < last:
            yield cell


@dataclass
class Edge:
    src_namespace: str
    src: str
    dst_namespace: str
    dst: str
    client_identities: set[str] = field(default_factory=set)
    server_identities: set[str] = field(default_factory=set)
    secured: bool = True  # every request and connection seen between them had mTLS
    requests: int = 0
    connections: int = 0


def edges(store: TelemetryStore, *, namespace: str = "", window_s: float = 60) -> list[Edge]:
    """Each client-server pair once. A meshed pair is reported by both agents (the client's
    outbound series and the server's inbound ones): the client's view counts, the server's only
    where no client agent reported (an unmeshed client). An inbound report names a client pod
    without its Deployment; any series that names that pod with its Deployment supplies it.
    Read from the store's edge aggregates (controlplane.telemetry.groups: the series of one
    pair, direction, identities and mTLS summed per bucket), not from every series."""
    first, last, _ = _window(store, window_s, include_current=True)
    groups = store.groups
    found: dict[tuple[str, str, str, str], Edge] = {}
    # (edge, direction) -> [requests, connections]
    counts: dict[tuple[tuple[str, str, str, str], str], list[int]] = {}
    for (direction, sns, sdep, spod, sid, dns, ddep, dpod, did, tls), cells in groups.by_kind[
        EDGE
    ].items():
        src = sdep or groups.owner(sns, spod) or spod
        dst = ddep or groups.owner(dns, dpod) or dpod
        if not src or not dst:
            continue
        if namespace and namespace not in (sns, dns):
            continue
        requests = connections = 0
        for cell in _in_window(cells, first, last):
            r, c = cell.edge_counts()
            requests += r
            connections += c
        for slot, amount in ((0, requests), (1, connections)):
            if not amount:
                continue
            ident = (sns, src, dns, dst)
            edge = found.get(ident) or found.setdefault(ident, Edge(*ident))
            edge.secured = edge.secured and tls
            if sid:
                edge.client_identities.add(sid)
            if did:
                edge.server_identities.add(did)
            tally = counts.setdefault((ident, direction), [0, 0])
            tally[slot] += amount
    for ident, edge in found.items():
        out = counts.get((ident, "outbound"), [0, 0])
        inb = counts.get((ident, "inbound"), [0, 0])
        edge.requests = out[0] or inb[0]
        edge.connections = out[1] or inb[1]
    return sorted(found.values(), key=lambda e: (e.src_namespace, e.src, e.dst_namespace, e.dst))


def nodes(store: TelemetryStore) -> list[NodeState]:
    return sorted(store.nodes.values(), key=lambda n: n.node)
