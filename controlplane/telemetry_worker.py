"""The telemetry store and its ingest in a worker, off the event loop that serves the agents.

The control plane's one event loop serves every agent's destination stream and the public API.
At 500 nodes the agents send 500 telemetry reports a second, each ~1 ms of Python (parse, check,
store), and a Stat over 10,000 pods takes 0.15-0.35 s of store work: on the same loop a pod
change waited behind them on its way to the agents (bench/results/controlplane-scale.md). Here
the store lives in a worker: a child process by default (its own interpreter lock: the loop
keeps only the hand-over of raw bytes), or a thread (`--telemetry-worker thread`, for
comparison; it shares the lock), or inline (`inline`: the old shape, store on the loop).

Interface:
- `TelemetryWorker(mode, max_series=, max_cells=, log_level=)`; `await start()` (the worker's
  pid); `close()`. One worker serves calls one at a time, in the order they were made.
- `WorkerTelemetryService(worker, index=, forward=, registry=)`: the agents' Telemetry.Report
  (a TelemetryService whose reports go to the worker; same checks, acks and metrics).
- `WorkerTelemetry(worker)`: the public API's TelemetryPort over the worker (coroutines).
Reports are handed over in batches (one batch in flight), so a question waits for one batch at
most. If the worker process dies, the next call starts a new one (its store starts empty) and
logs it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from prometheus_client import REGISTRY, CollectorRegistry

from controlplane import telemetry_child as child
from controlplane.agent_auth import calling_agent
from controlplane.index import ClusterIndex
from controlplane.stat_answer import Groups as StatGroups
from controlplane.telemetry.service import TelemetryService
from controlplane.telemetry_port import AgentState, EdgeStats, RouteRow, Selector, StatRow
from nodemesh import tasks
from nodemesh.api import telemetry_pb2 as pb

log = logging.getLogger(__name__)

MODES = ("process", "thread", "inline")
# Reports go to the worker in batches of at most this many, one batch at a time: a question
# (Stat) waits for one batch, not behind every agent's report of the second (500 of them,
# 1-4 ms each, measured: Stat p99 6.3 s at 250 nodes with one call per report). 16, not 32: a
# batch of 32 kept a cold Stat 36-45 ms (at 500 x 20, loaded); the control plane's process pays
# ~0.05 ms a report per call handed over (bench/results/round8/), so 16 costs it about as much
# per report as 32 did within that noise, and 8 twice as much.
REPORT_BATCH = 16
T = TypeVar("T")

# --- the loop's side (the worker's: controlplane.telemetry_child) ---------------------------


def _unflat(t: child.FlatRow) -> StatRow:
    (kind, namespace, name, window_s, success, failure, gauge, opened, closed, read, write,
     denied, *known) = t  # fmt: skip
    return StatRow(
        kind, namespace, name, window_s, success, failure, {}, gauge, opened, closed, read,
        write, denied, known_latency_ms=dict(zip(child.QUANTILES, known, strict=True)),
    )  # fmt: skip


@contextmanager
def _bare_main() -> Iterator[None]:
    """A spawned child runs the parent's main module again before anything else (here
    controlplane.main, which imports every server the control plane has: ~75 MiB of a child that
    needs the store alone). While the child is started, the main module is an empty one."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Inline(Executor):
    """Runs each call at once, on the caller's thread (the old shape, for comparison)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures import Future

        f: Future[T] = Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, as an executor does)
            f.set_exception(exc)
        return f


class TelemetryWorker:
    def __init__(
        self, mode: str = "process", *, max_series: int, max_cells: int, log_level: str = "INFO"
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"telemetry worker mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode = mode
        self._initargs = (max_series, max_cells, log_level)
        self.gauges: child.StoreGauges = (0, 0, 0, 0)
        self.pid: int | None = None
        self.restarts = 0
        self.known: frozenset[str] | None = None
        self._pending: list[tuple[bytes, str | None, asyncio.Future[tuple[pb.ReportAck, str]]]]
        self._pending = []
        self._flusher: asyncio.Task[None] | None = None
        self._pool = self._new_pool()

    def _new_pool(self) -> Executor:
        if self.mode == "process":
            # spawn, not fork: a forked child would inherit gRPC's threads and locks.
            return ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=child.init,
                initargs=(*self._initargs, os.getpid()),
            )
        child.init(*self._initargs, None)
        if self.mode == "thread":
            return ThreadPoolExecutor(1, thread_name_prefix="telemetry")
        return _Inline()

    async def start(self) -> int:
        self.pid = await self.call(child.set_known, self.known)
        return self.pid

    def _submit(self, pool: Executor, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        with _bare_main():  # the submit that starts the child process spawns it
            return asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        pool = self._pool
        try:
            return await self._submit(pool, fn, *args)
        except BrokenProcessPool:
            # The worker died (killed, out of memory): a new one, with an empty store (once,
            # whichever of the calls it left waiting notices first).
            if self._pool is pool:
                self.restarts += 1
                log.error("telemetry worker (pid %s) died; starting a new one", self.pid)
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                self.pid = await self._submit(self._pool, child.set_known, self.known)
            return await self._submit(self._pool, fn, *args)

    async def set_known(self, nodes: frozenset[str] | None) -> None:
        if nodes != self.known:
            self.known = nodes
            await self.call(child.set_known, nodes)

    async def report(self, raw: bytes, node: str | None) -> tuple[pb.ReportAck, str]:
        """Check and store one serialized report; its ack and refusal reason ("" if taken)."""
        answer: asyncio.Future[tuple[pb.ReportAck, str]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.append((raw, node, answer))
        if self._flusher is None or self._flusher.done():
            self._flusher = tasks.spawn(self._flush(), name="telemetry-reports")
        return await answer

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:REPORT_BATCH]
            del self._pending[:REPORT_BATCH]
            try:
                answers, self.gauges = await self.call(child.reports, [(r, n) for r, n, _ in batch])
            except Exception as exc:  # noqa: BLE001 (each waiting stream gets it)
                for *_, waiting in batch:
                    if not waiting.done():
                        waiting.set_exception(exc)
                continue
            for (*_, waiting), (ack, reason) in zip(batch, answers, strict=True):
                if not waiting.done():  # its stream may have ended meanwhile
                    waiting.set_result((pb.ReportAck.FromString(ack), reason))

    async def query(self, method: str, **kwargs: Any) -> Any:
        return await self.call(child.query, method, kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class WorkerTelemetryService(TelemetryService):
    """Telemetry.Report with the store in a `TelemetryWorker`: checks, acks, metrics and the
    forwarding to peer replicas as TelemetryService's."""

    def __init__(
        self,
        worker: TelemetryWorker,
        *,
        index: ClusterIndex,
        registry: CollectorRegistry = REGISTRY,
        forward: Callable[[bytes], None] | None = None,
    ) -> None:
        self.worker = worker
        self.index = index
        self.store = None  # type: ignore[assignment]  # in the worker
        self.is_known_node = lambda node: True  # checked in the worker (`known_nodes`)
        self.forward = forward
        from controlplane.telemetry.service import _metrics

        self.reports = _metrics(registry, lambda: worker.gauges)

    def known_nodes(self) -> frozenset[str] | None:
        """The nodes a report may come from (None: the index has not listed them yet)."""
        return frozenset(self.index.nodes) if self.index.synced else None

    async def on_index_changes(self) -> None:
        await self.worker.set_known(self.known_nodes())

    async def Report(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReportAck]:
        caller = calling_agent()
        node = caller.node if caller else None
        async for raw in request_iterator:
            if (self.worker.known is None) == self.index.synced:
                await self.worker.set_known(self.known_nodes())  # the index synced since
            ack, reason = await self.worker.report(raw, node)
            self.settled(raw, ack, reason, authenticated_node=node)
            yield ack


class WorkerTelemetry:
    """The public API's TelemetryPort over a `TelemetryWorker` (every method a coroutine)."""

    def __init__(self, worker: TelemetryWorker) -> None:
        self.worker = worker

    async def stat(
        self,
        *,
        group_by: str,
        namespace: str,
        source: Selector | None,
        destination: Selector | None,
        window_s: int,
    ) -> list[StatRow]:
        rows: list[child.FlatRow] = await self.worker.query(
            "stat",
            group_by=group_by,
            namespace=namespace,
            source=source,
            destination=destination,
            window_s=window_s,
        )
        return [_unflat(t) for t in rows]

    async def stat_answer(
        self,
        *,
        group_by: str,
        namespace: str,
        name: str,
        source: Selector | None,
        destination: Selector | None,
        window_s: int,
        groups: StatGroups,
    ) -> bytes:
        """The whole Stat answer, built and encoded in the worker (controlplane.stat_answer)."""
        kwargs = {
            "group_by": group_by, "namespace": namespace, "source": source,
            "destination": destination, "window_s": window_s,
        }  # fmt: skip
        raw: bytes = await self.worker.call(child.stat_answer, kwargs, name, groups)
        return raw

    async def edges(self, *, kind: str, namespace: str, window_s: int) -> list[EdgeStats]:
        found: list[EdgeStats] = await self.worker.query(
            "edges", kind=kind, namespace=namespace, window_s=window_s
        )
        return found

    async def routes(
        self, *, services: list[tuple[str, str]], source: Selector | None, window_s: int
    ) -> list[RouteRow]:
        rows: list[RouteRow] = await self.worker.query(
            "routes", services=services, source=source, window_s=window_s
        )
        return rows

    async def agents(self) -> list[AgentState]:
        found: list[AgentState] = await self.worker.query("agents")
        return found

    async def enrolled_pods(self) -> set[tuple[str, str, str]]:
        found: set[tuple[str, str, str]] = await self.worker.query("enrolled_pods")
        return found
