"""The telemetry worker's side: the store, and the calls the control plane makes of it
(controlplane.telemetry_worker runs these in a child process, a thread, or inline).

A spawned child imports this module and what it needs (the store, the report checks, the
queries), not the control plane's gRPC servers (bench/results/controlplane-scale.md, fourth
round: the worker's own memory)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from controlplane import stat_answer as answers
from controlplane.gc_pauses import keep_full_collections_short
from controlplane.telemetry.ingest import StoreGauges, store_gauges, take
from controlplane.telemetry.query import prepare_stat
from controlplane.telemetry.store import TelemetryStore
from controlplane.telemetry_port import StatRow, StoreTelemetry

# The quantiles the public API shows (routes_api.golden_into): computed where the histogram is,
# so an answer crosses to the loop as three numbers a row, not a histogram.
QUANTILES = (0.5, 0.95, 0.99)

_store: TelemetryStore | None = None
_known: frozenset[str] | None = None  # nodes the index knows; None: not synced, take any
# The store's groups as they were when the sums of complete buckets were last prepared.
_prepared = -1


def init(max_series: int, max_cells: int, log_level: str, parent: int | None) -> None:
    """`parent`: the control plane's pid when this runs in a child process (None in process).
    Taken from the control plane, not from getppid() here: a control plane killed while its
    worker was starting left a worker whose parent was already init (pid 1), which it then
    watched for good (four such, 21 MiB each, found after a loaded unit-test run)."""
    global _store, _known, _prepared
    if parent is not None:
        logging.basicConfig(
            level=log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s[telemetry worker]: %(message)s",
        )
        threading.Thread(
            target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True
        ).start()
        keep_full_collections_short()
    _store = TelemetryStore(max_series=max_series, max_cells=max_cells)
    _known = None
    _prepared = -1


def _exit_with_parent(parent: int) -> None:
    """A control plane killed outright (SIGKILL, OOM) left its worker running for good: the
    worker holds both ends of its call queue's pipe, so it never reads an end of file."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def the_store() -> TelemetryStore:
    assert _store is not None, "telemetry worker not initialised"
    return _store


def is_known(node: str) -> bool:
    return _known is None or node in _known


def set_known(nodes: frozenset[str] | None) -> int:
    global _known
    _known = nodes
    return os.getpid()


def reports(batch: list[tuple[bytes, str | None]]) -> tuple[list[tuple[bytes, str]], StoreGauges]:
    store = the_store()
    out = []
    for raw, node in batch:
        ack, reason = take(store, raw, authenticated_node=node, is_known_node=is_known)
        out.append((ack.SerializeToString(), reason))
    _prepare(store)
    return out, store_gauges(store)


def _prepare(store: TelemetryStore) -> None:
    """At a new bucket (or any change to the complete ones), the sums of the complete buckets a
    plain Stat over the default window reads, for every kind: summed here, they make the first
    Stat of a bucket as cheap as the next (at 10,000 pods, summing 6 buckets of each pod was
    ~40 % of a cold Stat pod's work: `bench/stat_cold.py`). About 12,500 resources summed once
    per 10 s bucket (twice when the store also trims a bucket to stay within its cells), a few
    per cent of a core: bench/results/controlplane-scale.md, seventh round."""
    global _prepared
    if store.groups.generation != _prepared:
        prepare_stat(store, answers.PLAIN_KINDS, answers.DEFAULT_WINDOW)
        _prepared = store.groups.generation
        for kind in answers.PLAIN_KINDS:
            answers.prepare(kind, store.groups.by_kind[kind].keys())


def query(method: str, kwargs: dict[str, Any]) -> Any:
    answer = getattr(StoreTelemetry(the_store()), method)(**kwargs)
    if method == "stat":
        # Plain tuples cross to the loop's process ~10x cheaper than 10,000 dataclasses.
        return [flat(r) for r in answer]
    if method == "routes":
        for row in answer:
            row.known_latency_ms = dict(zip(QUANTILES, row.latencies_ms(*QUANTILES), strict=True))
            row.latency = {}
    return answer


def stat_answer(kwargs: dict[str, Any], name: str, groups: answers.Groups) -> bytes:
    """A whole Stat answer, encoded (controlplane.stat_answer): the store's rows for `kwargs`
    (StoreTelemetry.stat's) joined with the index's `groups`, rows of `name` only if given."""
    port = StoreTelemetry(the_store())
    if kwargs["source"] is None and kwargs["destination"] is None:
        traffic = port.plain_traffic(
            group_by=kwargs["group_by"], namespace=kwargs["namespace"],
            window_s=kwargs["window_s"], quantiles=answers.QUANTILES,
        )  # fmt: skip
    else:
        traffic = answers.plain_of(port.stat(**kwargs), kwargs["window_s"])
    return answers.encode(
        kind=kwargs["group_by"], namespace=kwargs["namespace"], name=name,
        window=kwargs["window_s"], groups=groups, traffic=traffic, enrolled=port.enrolled_pods(),
    )  # fmt: skip


FlatRow = tuple[Any, ...]


def flat(r: StatRow) -> FlatRow:
    return (
        r.kind, r.namespace, r.name, r.window_s, r.success, r.failure, r.tcp_open_connections,
        r.tcp_opened, r.tcp_closed, r.read_bytes, r.write_bytes, r.authz_denied,
        *r.latencies_ms(*QUANTILES),
    )  # fmt: skip
