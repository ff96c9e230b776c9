"""Per-resource aggregates the store keeps as reports arrive: Stat reads these, not series.

A plain `stat KIND` (no --from/--to) sums, for each resource of KIND, every series that counts
towards it: Stat over 10,000 pods merged 20,000 series x 6 buckets per call. Here each series
cell, when the store opens it, joins one `GroupCell` per resource it counts towards (the same
10 s bucket): its destination's deployment, pod and namespace for inbound series, the Service it
addressed for outbound ones, and the reporting node for all. While the bucket runs a group cell
only lists its members (a report costs nothing here: adding every report's counts to four
groups tripled the ingest cost); when the bucket is complete the members are summed once into
the cell (`seal`), so a query merges one cell per resource and complete bucket, plus the
running bucket's members. The groups follow the series exactly: a group cell exists while any
of its series has a cell in that bucket, the store's trimming and expiry drop the same buckets,
and a series the store evicts is taken back out, so an answer from the groups equals one from a
scan of the series (tests/unit/telemetry/test_stat_groups.py).

Edges likewise reads `by_kind[EDGE]`: the series of one (direction, source and destination
namespace, Deployment or else pod, identity, mTLS) summed per bucket (requests and connections
only), with `owner(namespace, pod)`, the Deployment any held series names a pod with (an inbound
series names its client pod without one).

Interface: `Groups()`; the store `attach`es each new series once (the resources it feeds), calls
`join_request` / `join_tcp` when a series opens a cell, `forget` for a series evicted whole,
`detach` when it lets a series go, and `expire` at each new bucket; `cells` counts the group
cells held; the query reads `by_kind[kind][(namespace, name)]`, a `GroupSeries` (a list of
`GroupCell`, oldest first) and adds each cell with `add_into(row)` and `gauge()`.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any, Protocol

from controlplane.telemetry.report import RequestKey, TcpKey
from nodemesh.kinds import KINDS

if TYPE_CHECKING:
    from controlplane.telemetry.store import RequestCell, TcpCell

BUCKET_SECONDS = 10  # as the store's (controlplane.telemetry.store)
GroupKey = tuple[str, str, str]  # kind, namespace, name (namespace "" for namespace and node)


class Row(Protocol):
    success: int
    failure: int
    authz_denied: int
    latency: dict[int, int]
    tcp_opened: int
    tcp_closed: int
    read_bytes: int
    write_bytes: int


class GroupCell:
    __slots__ = (
        "start",
        "keep_latency",
        "members",
        "requests",
        "conns",
        "success",
        "failure",
        "authz_denied",
        "latency",
        "opened",
        "closed",
        "read_bytes",
        "write_bytes",
    )

    def __init__(self, start: int, *, keep_latency: bool = True) -> None:
        self.start = start
        self.keep_latency = keep_latency  # an edge's cell counts requests, not their latency
        self.members = 0  # series cells of this bucket counted here
        # While the bucket runs: (success, denied, cell) of each member request series; None
        # once sealed (summed into the fields below).
        self.requests: list[tuple[bool, bool, RequestCell]] | None = []
        # Each member connection series with its cell, kept while the cell is fresh: the open
        # connections gauge counts a series' newest cell only. None once stale.
        self.conns: list[tuple[list[TcpCell], TcpCell]] | None = []
        self.success = self.failure = self.authz_denied = 0
        # Summed latency of a complete bucket, kept as the series cells keep theirs
        # (store.RequestCell): a flat array of (index, count) pairs.
        self.latency: array[int] = array("Q")
        self.opened = self.closed = self.read_bytes = self.write_bytes = 0

    def add_into(self, row: Row) -> None:
        if self.requests is None:
            row.success += self.success
            row.failure += self.failure
            row.authz_denied += self.authz_denied
            target, flat = row.latency, self.latency
            for i in range(0, len(flat), 2):
                target[flat[i]] = target.get(flat[i], 0) + flat[i + 1]
            row.tcp_opened += self.opened
            row.tcp_closed += self.closed
            row.read_bytes += self.read_bytes
            row.write_bytes += self.write_bytes
            return
        _sum_requests(self.requests, row, row.latency)
        for _, c in self.conns or ():
            row.tcp_opened += c.opened
            row.tcp_closed += c.closed
            row.read_bytes += c.read_bytes
            row.write_bytes += c.write_bytes
            row.authz_denied += c.authz_denied

    def gauge(self) -> int:
        """Open connections of the member series whose newest cell is this one."""
        gauge = 0
        for series, c in self.conns or ():  # a loop: a generator costs more for a few members
            if series[-1] is c:
                gauge += c.open_connections
        return gauge

    def edge_counts(self) -> tuple[int, int]:
        """Requests and connections opened in this bucket (what Edges counts)."""
        if self.requests is None:
            return self.success + self.failure, self.opened
        return (
            sum(c.responses for _, _, c in self.requests),
            sum(c.opened for _, c in self.conns or ()),
        )

    def seal(self) -> None:
        """Sum the members of a complete bucket into the cell (once)."""
        if self.requests is None:
            return
        latency: dict[int, int] = {}
        _sum_requests(self.requests, self, latency if self.keep_latency else None)
        for index in sorted(latency):
            self.latency.append(index)
            self.latency.append(latency[index])
        for _, c in self.conns or ():
            self.opened += c.opened
            self.closed += c.closed
            self.read_bytes += c.read_bytes
            self.write_bytes += c.write_bytes
            self.authz_denied += c.authz_denied
        self.requests = None

    def take_out_request(self, success: bool, denied: bool, cell: RequestCell) -> None:
        self.members -= 1
        if self.requests is not None:
            self.requests = [m for m in self.requests if m[2] is not cell]
            return
        if not self.keep_latency:
            if success:
                self.success -= cell.responses
            else:
                self.failure -= cell.responses
            if denied:
                self.authz_denied -= cell.responses
            return
        if success:
            self.success -= cell.responses
        else:
            self.failure -= cell.responses
        if denied:
            self.authz_denied -= cell.responses
        held = dict(zip(self.latency[::2], self.latency[1::2], strict=True))
        removed: dict[int, int] = {}
        cell.latency_into(removed)
        for index, n in removed.items():
            held[index] = held.get(index, 0) - n
        self.latency = array("Q")
        for index in sorted(held):
            if held[index]:
                self.latency.append(index)
                self.latency.append(held[index])

    def take_out_conn(self, cell: TcpCell) -> None:
        self.members -= 1
        if self.conns is not None:
            self.conns = [m for m in self.conns if m[1] is not cell]
        if self.requests is None:
            self.opened -= cell.opened
            self.closed -= cell.closed
            self.read_bytes -= cell.read_bytes
            self.write_bytes -= cell.write_bytes
            self.authz_denied -= cell.authz_denied


def _sum_requests(
    requests: list[tuple[bool, bool, RequestCell]],
    into: Row | GroupCell,
    latency: dict[int, int] | None,
) -> None:
    """Add the member request cells' counts to `into` and their latency to `latency` (a running
    bucket read by a query, or a bucket being sealed)."""
    for success, denied, cell in requests:
        if success:
            into.success += cell.responses
        else:
            into.failure += cell.responses
        if denied:
            into.authz_denied += cell.responses
        if latency is not None:
            cell.latency_into(latency)


def groups_of(key: RequestKey | TcpKey) -> list[GroupKey]:
    """The resources a series counts towards in a plain Stat (the query's `_row_of` without
    --from/--to, written out per kind). None for a route series: the L7 path's view of
    requests the relay counted too (the query's scan skips them likewise)."""
    if getattr(key, "route", ""):
        return []
    out: list[GroupKey] = [("node", "", key.node)]
    dst = key.dst
    if key.direction == "inbound":
        if dst.deployment:
            out.append(("deployment", dst.namespace, dst.deployment))
        if dst.pod:
            out.append(("pod", dst.namespace, dst.pod))
        if dst.namespace:
            out.append(("namespace", "", dst.namespace))
    elif key.direction == "outbound" and dst.service:
        out.append(("service", dst.namespace, dst.service))
    return out


# What Edges needs of a series, without the owner lookup it makes at query time: direction, then
# for the source and the destination namespace, Deployment, pod (only when no Deployment),
# identity; then whether the traffic had mTLS. Many series (status codes, protocols, nodes) share
# one.
EdgeKey = tuple[str, str, str, str, str, str, str, str, str, bool]
EDGE = "edge"  # the aggregates' table of edges (not a resource kind)


def edge_of(key: RequestKey | TcpKey) -> EdgeKey | None:
    if getattr(key, "route", ""):
        return None  # the L7 path's view of requests the relay counted too
    s, d = key.src, key.dst
    return (
        key.direction,
        s.namespace, s.deployment, "" if s.deployment else s.pod, s.identity,
        d.namespace, d.deployment, "" if d.deployment else d.pod, d.identity,
        key.tls,
    )  # fmt: skip


class GroupSeries(list[GroupCell]):
    """One resource's cells, oldest first; `refs` counts the store's series that feed it (it
    stays, empty or not, while any does, so a series can hold on to it)."""

    __slots__ = ("kind", "name", "refs")

    def __init__(self, kind: str, name: tuple[Any, ...]) -> None:
        super().__init__()
        self.kind = kind
        self.name = name
        self.refs = 0

    def at(self, start: int) -> GroupCell | None:
        for cell in reversed(self):
            if cell.start == start:
                return cell
            if cell.start < start:
                return None
        return None


Attached = tuple[GroupSeries, ...]


class Groups:
    def __init__(self) -> None:
        self.by_kind: dict[str, dict[Any, GroupSeries]] = {k: {} for k in (*KINDS, EDGE)}
        # (namespace, pod) -> {Deployment: series naming the pod with it}: Edges names a client
        # pod an inbound series saw without its Deployment by what any other series says.
        self.owners: dict[tuple[str, str], dict[str, int]] = {}
        self.cells = 0
        # Bumped whenever a complete bucket's cells change (sealed, taken out, dropped): the
        # query keeps the complete buckets' sums per (kind, window) while it stays the same.
        self.generation = 0
        self.sealed_sums: dict[tuple[str, int, int], tuple[int, dict[tuple[str, str], object]]]
        self.sealed_sums = {}

    def attach(self, key: RequestKey | TcpKey) -> Attached:
        """The resources a new series of the store feeds (looked up once, not per report)."""
        wanted: list[tuple[str, tuple[Any, ...]]] = [
            (kind, (namespace, name)) for kind, namespace, name in groups_of(key)
        ]
        edge = edge_of(key)
        if edge is not None:
            wanted.append((EDGE, edge))
        out = []
        for kind, name in wanted:
            table = self.by_kind[kind]
            found = table.get(name)
            if found is None:
                found = table[name] = GroupSeries(kind, name)
            found.refs += 1
            out.append(found)
        for p in (key.src, key.dst):
            if p.pod and p.deployment:
                named = self.owners.setdefault((p.namespace, p.pod), {})
                named[p.deployment] = named.get(p.deployment, 0) + 1
        return tuple(out)

    def owner(self, namespace: str, pod: str) -> str:
        """The Deployment any series names `pod` with ("" if none does)."""
        named = self.owners.get((namespace, pod))
        return next(iter(named), "") if named else ""

    def detach(self, key: RequestKey | TcpKey, attached: Attached) -> None:
        """A series the store no longer holds."""
        for p in (key.src, key.dst):
            if p.pod and p.deployment:
                named = self.owners[(p.namespace, p.pod)]
                named[p.deployment] -= 1
                if not named[p.deployment]:
                    del named[p.deployment]
                    if not named:
                        del self.owners[(p.namespace, p.pod)]
        for series in attached:
            series.refs -= 1
            if series.refs <= 0 and not series:
                del self.by_kind[series.kind][series.name]

    def _at(self, series: GroupSeries, start: int) -> GroupCell:
        if series and series[-1].start == start:
            cell = series[-1]
        else:
            cell = GroupCell(start, keep_latency=series.kind != EDGE)
            series.append(cell)
            self.cells += 1
        cell.members += 1
        return cell

    def join_request(
        self, attached: Attached, cell: RequestCell, *, success: bool, denied: bool
    ) -> None:
        """A request series opened `cell` (in the running bucket)."""
        member = (success, denied, cell)
        for series in attached:
            running = self._at(series, cell.start).requests
            assert running is not None, "a cell joined a complete bucket"
            running.append(member)

    def join_tcp(self, attached: Attached, series_cells: list[TcpCell], cell: TcpCell) -> None:
        """A connection series (`series_cells`) opened `cell` (in the running bucket)."""
        member = (series_cells, cell)
        for series in attached:
            conns = self._at(series, cell.start).conns
            assert conns is not None, "a cell joined a stale bucket"
            conns.append(member)

    def forget(self, key: RequestKey | TcpKey, attached: Attached, cells: list[object]) -> None:
        """Take out every cell of a series the store dropped whole."""
        self.generation += 1
        for series_cell in cells:
            for series in attached:
                cell = series.at(series_cell.start)  # type: ignore[attr-defined]
                if cell is None:
                    continue
                if isinstance(key, RequestKey):
                    cell.take_out_request(key.success, bool(key.authz), series_cell)  # type: ignore[arg-type]
                else:
                    cell.take_out_conn(series_cell)  # type: ignore[arg-type]
                if cell.members <= 0:
                    series.remove(cell)
                    self.cells -= 1

    def expire(self, oldest: int, current: int) -> None:
        """At a new bucket: seal the complete cells, let go of the connection lists no gauge
        reads any more, drop every cell before `oldest` (the store dropped those buckets of
        every series)."""
        self.generation += 1
        fresh_from = current - BUCKET_SECONDS
        for table in self.by_kind.values():
            for name in list(table):
                cells = table[name]
                for cell in reversed(cells):
                    if cell.start < current:
                        if cell.requests is None and cell.conns is None:
                            break  # sealed and stale already, as is everything before it
                        cell.seal()
                        if cell.start < fresh_from:
                            cell.conns = None
                stale = 0
                while stale < len(cells) and cells[stale].start < oldest:
                    stale += 1
                if stale:
                    del cells[:stale]
                    self.cells -= stale
                if not cells and cells.refs <= 0:
                    del table[name]
