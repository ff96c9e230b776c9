"""Per-resource aggregates the store keeps as reports arrive: Stat reads these, not series.

A plain `stat KIND` (no --from/--to) sums, for each resource of KIND, every series that counts
towards it: Stat over 10,000 pods merged 20,000 series x 6 buckets per call. Here each series
cell is also added, as it is written, to one `GroupCell` per resource it counts towards (the
same 10 s bucket): its destination's deployment, pod and namespace for inbound series, the
Service it addressed for outbound ones, and the reporting node for all. A query then merges
a group's few cells. The groups follow the series exactly: a group cell exists while any of
its series has a cell in that bucket (`members`), the store's trimming and expiry drop the
same buckets, and a series the store evicts is subtracted back out, so an answer from the
groups equals one from a scan of the series (tests/unit/controlplane/test_cp_stat_groups.py).

Interface: `Groups()` with `add_request`, `add_tcp`, `forget_requests` / `forget_tcp` (a series
evicted whole), `expire(oldest)`, `cells` (group cells held) and `by_kind[kind][(namespace,
name)] -> list[GroupCell]` (oldest first) for the query.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from typing import TYPE_CHECKING

from controlplane.telemetry.report import RequestKey, TcpKey
from nodemesh.kinds import KINDS

if TYPE_CHECKING:
    from controlplane.telemetry.store import RequestCell, TcpCell

GroupKey = tuple[str, str, str]  # kind, namespace, name (namespace "" for namespace and node)


class GroupCell:
    __slots__ = (
        "start",
        "members",
        "success",
        "failure",
        "authz_denied",
        "latency",
        "opened",
        "closed",
        "read_bytes",
        "write_bytes",
        "gauge",
    )

    def __init__(self, start: int) -> None:
        self.start = start
        self.members = 0  # series cells of this bucket added here
        self.success = self.failure = self.authz_denied = 0
        self.latency: dict[int, int] | array[int] = {}
        self.opened = self.closed = self.read_bytes = self.write_bytes = 0
        # Open connections of the member TCP series whose newest cell is this one.
        self.gauge = 0

    # A complete bucket's latency is kept as the series cells keep theirs (store.RequestCell):
    # a flat array of (index, count) pairs, less than half a dict's memory.
    def latency_into(self, target: dict[int, int]) -> None:
        latency = self.latency
        if isinstance(latency, dict):
            for index, n in latency.items():
                target[index] = target.get(index, 0) + n
            return
        for i in range(0, len(latency), 2):
            target[latency[i]] = target.get(latency[i], 0) + latency[i + 1]

    def open_latency(self) -> dict[int, int]:
        if not isinstance(self.latency, dict):
            flat = self.latency
            self.latency = dict(zip(flat[::2], flat[1::2], strict=True))
        return self.latency

    def seal(self) -> None:
        if isinstance(self.latency, dict):
            flat = array("Q")
            for index in sorted(self.latency):
                flat.append(index)
                flat.append(self.latency[index])
            self.latency = flat


def groups_of(key: RequestKey | TcpKey) -> list[GroupKey]:
    """The resources a series counts towards in a plain Stat (the query's `_row_of` without
    --from/--to, written out per kind)."""
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


class Groups:
    def __init__(self) -> None:
        self.by_kind: dict[str, dict[tuple[str, str], list[GroupCell]]] = {k: {} for k in KINDS}
        self.cells = 0

    def _at(self, group: GroupKey, start: int, new_member: bool) -> GroupCell:
        table = self.by_kind[group[0]]
        cells = table.get(group[1:])
        if cells is None:
            cells = table[group[1:]] = []
        if not cells or cells[-1].start != start:
            cells.append(GroupCell(start))
            self.cells += 1
        cell = cells[-1]
        if new_member:
            cell.members += 1
        return cell

    def _find(self, group: GroupKey, start: int) -> GroupCell | None:
        cells = self.by_kind[group[0]].get(group[1:])
        for cell in reversed(cells or ()):
            if cell.start == start:
                return cell
            if cell.start < start:
                return None
        return None

    def add_request(
        self,
        key: RequestKey,
        start: int,
        *,
        new_cell: bool,
        responses: int,
        latency: Mapping[int, int],
    ) -> None:
        for group in groups_of(key):
            cell = self._at(group, start, new_cell)
            if key.success:
                cell.success += responses
            else:
                cell.failure += responses
            if key.authz:
                cell.authz_denied += responses
            target = cell.open_latency()
            for index, n in latency.items():
                target[index] = target.get(index, 0) + n

    def add_tcp(
        self,
        key: TcpKey,
        start: int,
        *,
        new_cell: bool,
        previous: tuple[int, int] | None,
        opened: int,
        closed: int,
        read_bytes: int,
        write_bytes: int,
        authz_denied: int,
        open_connections: int,
    ) -> None:
        """`previous`: (bucket start, open connections) of the series' newest cell before
        this report, if it had one (the gauge moves from there)."""
        for group in groups_of(key):
            if previous is not None:
                before = self._find(group, previous[0])
                if before is not None:
                    before.gauge -= previous[1]
            cell = self._at(group, start, new_cell)
            cell.opened += opened
            cell.closed += closed
            cell.read_bytes += read_bytes
            cell.write_bytes += write_bytes
            cell.authz_denied += authz_denied
            cell.gauge += open_connections

    def forget_requests(self, key: RequestKey, cells: list[RequestCell]) -> None:
        """Subtract a request series the store dropped whole."""
        groups = groups_of(key)
        for series_cell in cells:
            latency: dict[int, int] = {}
            series_cell.latency_into(latency)
            for group in groups:
                cell = self._find(group, series_cell.start)
                if cell is None:
                    continue
                if key.success:
                    cell.success -= series_cell.responses
                else:
                    cell.failure -= series_cell.responses
                if key.authz:
                    cell.authz_denied -= series_cell.responses
                held = cell.open_latency()
                for index, n in latency.items():
                    left = held.get(index, 0) - n
                    if left:
                        held[index] = left
                    else:
                        held.pop(index, None)
                self._leave(group, cell)

    def forget_tcp(self, key: TcpKey, cells: list[TcpCell]) -> None:
        """Subtract a TCP series the store dropped whole (its gauge with its newest cell)."""
        groups = groups_of(key)
        for series_cell in cells:
            for group in groups:
                cell = self._find(group, series_cell.start)
                if cell is None:
                    continue
                cell.opened -= series_cell.opened
                cell.closed -= series_cell.closed
                cell.read_bytes -= series_cell.read_bytes
                cell.write_bytes -= series_cell.write_bytes
                cell.authz_denied -= series_cell.authz_denied
                if series_cell is cells[-1]:
                    cell.gauge -= series_cell.open_connections
                self._leave(group, cell)

    def _leave(self, group: GroupKey, cell: GroupCell) -> None:
        cell.members -= 1
        if cell.members <= 0:
            self._drop(group, cell)

    def _drop(self, group: GroupKey, cell: GroupCell) -> None:
        table = self.by_kind[group[0]]
        cells = table[group[1:]]
        cells.remove(cell)
        self.cells -= 1
        if not cells:
            del table[group[1:]]

    def expire(self, oldest: int, current: int) -> None:
        """Drop every group cell of a bucket before `oldest` (the store dropped those buckets
        of every series); seal the ones before `current` (complete)."""
        for table in self.by_kind.values():
            for name in list(table):
                cells = table[name]
                if cells and cells[-1].start < current:
                    cells[-1].seal()
                stale = 0
                while stale < len(cells) and cells[stale].start < oldest:
                    stale += 1
                if stale:
                    del cells[:stale]
                    self.cells -= stale
                if not cells:
                    del table[name]
