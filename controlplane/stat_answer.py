"""A Stat answer: the store's traffic per resource joined with the index's resources.

One protobuf row per resource of the kind asked (those the index knows, with no traffic yet,
and those with traffic the index does not know), sorted by (namespace, name), with how many of
its running pods a live agent enrolled. Built where the traffic is:
- with the store in the telemetry worker (the default), the worker builds and encodes the
  whole answer next to the store (`telemetry_child.stat_answer`): the event loop that serves
  the agents sends the index's side (`PodRef`s per resource, `groups_of`) and gets the encoded
  answer back. When the loop built the rows, a Stat over 10,000 pods held it for stretches of
  tens of milliseconds (unpacking the worker's rows, sorting, the rows, the encoding: ~0.2 s of
  its CPU per build, once a second while asked), and every other call waited behind them;
- otherwise (Prometheus, a store in process) on the loop, giving it back every
  `turn_s` (`rows_into` yields every `ROWS_PER_CHECK` rows for the caller to check).
Both take their rows from `_rows`, so both give the same rows for the same inputs; the worker
writes the bytes itself (`encode`, controlplane.stat_wire: the bytes protobuf writes for
`build`'s answer), the loop makes protobuf rows (`rows_into`). The worker's plain Stat (no
--from/--to) reads each resource's counts and quantiles in one pass over the store's
aggregates (`query.plain_traffic`: a tuple a row, no StatRow nor histogram per row); the loop
turns a port's StatRows into the same tuples (`plain_of`). When a bucket begins the worker
sorts the store's resources into the order the next answer starts from and writes their
`resource` fields (`prepare`), as it sums the complete buckets then (query.prepare_stat).
"""

from __future__ import annotations

import threading
from bisect import insort
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as KeySet
from itertools import chain
from typing import TYPE_CHECKING, Any

from controlplane import stat_wire
from nodemesh.api import public_pb2 as pb

if TYPE_CHECKING:
    from controlplane.index import ClusterIndex
    from controlplane.telemetry.query import PlainTraffic, StatRow

Group = tuple[str, str]  # (namespace, name); namespace empty for namespaces and nodes
PodRef = tuple[str, str, str]  # (namespace, name, uid) of a pod that counts (running)
Groups = dict[Group, list[PodRef]]
ROWS_PER_CHECK = 256
DEFAULT_WINDOW = 60  # seconds, a Stat's window when the caller gives none
# The kinds a plain Stat (no --from/--to) groups by (controlplane.telemetry.groups).
PLAIN_KINDS = ("deployment", "pod", "namespace", "service", "node")
QUANTILES = (0.5, 0.95, 0.99)


def groups_of(index: ClusterIndex, kind: str, namespace: str) -> Groups:
    """Every resource of `kind` the index knows, with its running pods (neither being deleted
    nor finished), in one pass over the pods."""
    groups: dict[Group, list[PodRef]] = defaultdict(list)
    idx = index

    def counts(p: Any) -> bool:
        return not p.terminating and p.phase not in ("Succeeded", "Failed")

    if kind == "namespace":
        for ns in idx.namespaces():
            groups[("", ns)]
        for p in idx.pods.values():
            pods = groups[("", p.key.namespace)]
            if counts(p):
                pods.append((p.key.namespace, p.key.name, p.uid))
        return dict(groups)
    if kind == "node":
        for node in idx.nodes:
            groups[("", node)]
        for p in idx.pods.values():
            if p.node:
                pods = groups[("", p.node)]
                if counts(p):
                    pods.append((p.key.namespace, p.key.name, p.uid))
        return dict(groups)
    if kind == "service":
        for key, svc in idx.services.items():
            if namespace and key.namespace != namespace:
                continue
            groups[(key.namespace, key.name)] = [
                (pod.key.namespace, pod.key.name, pod.uid)
                for e in svc.endpoints
                if e.pod is not None and (pod := idx.pods.get(e.pod)) is not None and counts(pod)
            ]
        return dict(groups)
    for ref in idx.workloads:
        if kind == "deployment" and ref.kind == "Deployment":
            if not namespace or ref.namespace == namespace:
                groups[(ref.namespace, ref.name)]
    for p in idx.pods.values():
        if namespace and p.key.namespace != namespace:
            continue
        if kind == "pod":
            pods = groups[(p.key.namespace, p.key.name)]
        elif p.workload.kind == "Deployment":
            pods = groups[(p.key.namespace, p.workload.name)]
        else:
            continue
        if counts(p):
            pods.append((p.key.namespace, p.key.name, p.uid))
    return dict(groups)


class Enrolled:
    """Which pods count as meshed: those a live agent says it enrolled (a namespace label
    alone proves nothing: the agent of the pod's node may be down or absent)."""

    def __init__(self, pods: Iterable[PodRef]) -> None:
        self.uids = {(ns, name): uid for ns, name, uid in pods}

    def __call__(self, p: PodRef) -> bool:
        uid = self.uids.get((p[0], p[1]))
        # A pod recreated under the same name (a StatefulSet's) is another pod.
        return uid is not None and (not uid or not p[2] or uid == p[2])


def _rows(
    *, kind: str, namespace: str, name: str, groups: Groups,
    traffic: Mapping[Group, PlainTraffic], enrolled: Iterable[PodRef],
) -> Iterator[tuple[Group, int, int, PlainTraffic | None]]:  # fmt: skip
    """The answer's rows in order: (resource, meshed pods, total pods, traffic or None).

    A pod counts as meshed when a live agent enrolled it: its (namespace, name, uid) is one the
    agents reported, or the agents' or the index's uid for it is unknown (empty). Sorted from
    the order the last answer of this kind had (`_Order`)."""
    reported = enrolled if isinstance(enrolled, (set, frozenset)) else set(enrolled)
    uids: dict[tuple[str, str], str] | None = None  # made when a pod is not in `reported`
    order = _order_of(kind, namespace)
    gone: list[Group] = []
    for key in order.sorted_with(groups.keys(), traffic.keys()):
        pods = groups.get(key)
        t = traffic.get(key)
        if pods is None:
            if t is None:
                gone.append(key)  # neither the index nor the store has it now
                continue
            pods = []
        if name and key[1] != name:
            continue
        if namespace and key[0] and key[0] != namespace:
            continue
        meshed = 0
        for p in pods:
            if p in reported:
                meshed += 1
                continue
            if uids is None:
                uids = {(ns, pod): uid for ns, pod, uid in reported}
            # The same name under another uid (a StatefulSet's pod recreated) is another pod.
            held = uids.get((p[0], p[1]))
            if held is not None and (not held or not p[2]):
                meshed += 1
        yield key, meshed, len(pods), t
    order.forget(gone)


class _Order:
    """The resources of the last answer of a kind, sorted (and as a set), where the next answer
    starts from: its new resources are sorted in, those gone taken out after it. Sorting 10,000
    (namespace, name) pairs from scratch took 8-12 ms of a cold Stat pod."""

    def __init__(self, keys: Iterable[Group]) -> None:
        self.keys = sorted(keys)
        self.held = set(self.keys)
        # A thread worker's answers and the loop's (a Prometheus port's) may share one.
        self.lock = threading.Lock()
        self.answered = False  # an answer started from it since `prepare` last looked

    def sorted_with(self, *tables: KeySet[Group]) -> list[Group]:
        """Every key held and every key of `tables`, sorted (held ones gone included)."""
        self.add(*tables)
        self.answered = True
        return self.keys

    def add(self, *tables: KeySet[Group]) -> set[Group]:
        """Sort in the keys of `tables` not held yet; returns them."""
        with self.lock:
            held = self.held
            new: set[Group] = set()
            for table in tables:
                new |= table - held
            if new:
                if len(new) <= 64:
                    keys = self.keys.copy()  # the list handed out stays as it was
                    for k in new:
                        insort(keys, k)
                else:
                    keys = sorted(chain(self.keys, new))
                self.keys = keys
                held |= new
            return new

    def forget(self, gone: list[Group]) -> None:
        if gone:
            dropped = set(gone)
            with self.lock:
                self.keys = [k for k in self.keys if k not in dropped]
                self.held -= dropped


_orders: dict[tuple[str, str], _Order] = {}


def _order_of(kind: str, namespace: str) -> _Order:
    found = _orders.get((kind, namespace))
    if found is None:
        if len(_orders) >= 16:  # kinds x namespaces asked lately
            _orders.pop(next(iter(_orders)))
        found = _orders[(kind, namespace)] = _Order(())
    return found


def prepare(kind: str, resources: KeySet[Group]) -> None:
    """In the telemetry worker, when a bucket begins: the store's `resources` of `kind` sorted
    into the order its next answer over all namespaces starts from, and their `resource` fields
    written, so that the first answer does neither (~25 ms of a cold Stat pod at 10,000 pods;
    once they are held, a bucket's new resources only: ~1 ms)."""
    fields = _resource_fields.of(kind)
    order = _order_of(kind, "")
    for key in order.add(resources):
        fields[key]
    # Resources gone from both the index and the store leave with the next answer (`_rows`).
    # With no answer since the last bucket, the store's are dropped here once they are a
    # quarter of those held (else pod churn grows the order without bound); the index's own
    # resources with no traffic go too, and come back with the next answer.
    if not order.answered:
        stale = order.held - resources
        if len(stale) > len(order.held) // 4:
            order.forget(list(stale))
    order.answered = False


def rows_into(
    answer: pb.StatResponse,
    *,
    kind: str,
    namespace: str,
    name: str,
    window: int,
    groups: Groups,
    traffic: Mapping[Group, PlainTraffic],
    enrolled: Iterable[PodRef],
) -> Iterator[None]:
    """Add the answer's rows to `answer`, yielding every ROWS_PER_CHECK rows. `traffic`: each
    resource's counts as `controlplane.telemetry.query.plain_traffic` gives them (the worker's
    store), or `plain_of` a port's StatRows (the loop's)."""
    add = answer.rows.add  # a row made in place: no copy of 10,000 messages at the end
    n = 0
    for key, meshed, total, t in _rows(
        kind=kind, namespace=namespace, name=name, groups=groups, traffic=traffic,
        enrolled=enrolled,
    ):  # fmt: skip
        resource = {"kind": kind, "namespace": key[0], "name": key[1]}
        if t is None:
            add(resource=resource, meshed_pods=meshed, total_pods=total)
        else:
            # All fields at once (a third of the cost of setting them one by one); an optional
            # field given None stays absent, zeros of the others are not encoded: the bytes
            # are those of a row given only the fields that have a value.
            covered, success, failure, gauge, read, write, denied, p50, p95, p99 = t
            requests = success + failure
            add(resource=resource, meshed_pods=meshed, total_pods=total,
                requests=requests, rps=requests / covered, covered_seconds=covered,
                success_rate=success / requests if requests else None,
                latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
                tcp_open_connections=gauge, tcp_read_bytes=read, tcp_write_bytes=write,
                authz_denied=denied)  # fmt: skip
        n += 1
        if n % ROWS_PER_CHECK == 0:
            yield


_resource_fields = stat_wire.ResourceFields()


def encode(
    *,
    kind: str,
    namespace: str,
    name: str,
    window: int,
    groups: Groups,
    traffic: Mapping[Group, PlainTraffic],
    enrolled: Iterable[PodRef],
) -> bytes:
    """The whole answer, encoded: the bytes of `build(...).SerializeToString()`, written by
    controlplane.stat_wire (where nothing else waits for the thread: the worker)."""
    fields = _resource_fields.of(kind)
    row = stat_wire.row
    out = [
        row(fields[key], meshed, total, t)
        for key, meshed, total, t in _rows(
            kind=kind, namespace=namespace, name=name, groups=groups, traffic=traffic,
            enrolled=enrolled,
        )
    ]  # fmt: skip
    out.append(stat_wire.window_field(window))
    return b"".join(out)


def build(
    *,
    kind: str,
    namespace: str,
    name: str,
    window: int,
    groups: Groups,
    traffic: Mapping[Group, PlainTraffic],
    enrolled: Iterable[PodRef],
) -> pb.StatResponse:
    """The whole answer at once (where nothing else waits for the thread: the worker)."""
    answer = pb.StatResponse(window_seconds=window)
    for _ in rows_into(
        answer, kind=kind, namespace=namespace, name=name, window=window, groups=groups,
        traffic=traffic, enrolled=enrolled,
    ):  # fmt: skip
        pass
    return answer


def plain_of(rows: Iterable[StatRow], window: int) -> dict[Group, PlainTraffic]:
    """A port's rows in `rows_into`'s form (query.PlainTraffic: the window the caller asked for
    where a row covers none)."""
    return {
        (g.namespace, g.name): (
            g.window_s or window, g.success, g.failure, g.tcp_open_connections, g.read_bytes,
            g.write_bytes, g.authz_denied, *g.latencies_ms(*QUANTILES),
        )
        for g in rows
    }  # fmt: skip
