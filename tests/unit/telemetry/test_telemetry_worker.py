"""The store in a worker (controlplane.telemetry_worker): the agents' reports go there and the
public API's questions are answered there, with the same answers as the store in process."""

from __future__ import annotations

import asyncio
import os
import random
import signal

import pytest
from agent_reports import EMOJI, VOTING, WEB, ReportBuilder, peer
from prometheus_client import CollectorRegistry
from test_stat_groups import _report

from controlplane.index import ClusterIndex
from controlplane.telemetry import TelemetryStore, parse_report
from controlplane.telemetry_port import Selector, StoreTelemetry
from controlplane.telemetry_worker import TelemetryWorker, WorkerTelemetry, WorkerTelemetryService

KINDS = ("deployment", "pod", "namespace", "service", "node")


def _golden(rows: list) -> list[tuple]:  # type: ignore[type-arg]
    return [
        (r.kind, r.namespace, r.name, r.success, r.failure, r.authz_denied,
         r.tcp_open_connections, r.tcp_opened, r.tcp_closed, r.read_bytes, r.write_bytes,
         tuple(r.latencies_ms(0.5, 0.95, 0.99)))
        for r in rows
    ]  # fmt: skip


@pytest.fixture(params=["process", "thread"])
async def worker(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    w = TelemetryWorker(request.param, max_series=20_000, max_cells=400_000, log_level="WARNING")
    await w.start()
    yield w
    w.close()


async def test_the_worker_answers_as_the_store_in_process(worker: TelemetryWorker) -> None:
    here = StoreTelemetry(TelemetryStore())
    rng = random.Random(3)
    for i in range(40):
        agent = _report(rng, f"node{i % 3 + 1}")
        agent.request([900, 1200], src=WEB, dst=EMOJI)
        report = agent.report()
        raw = report.SerializeToString()
        here.store.ingest(parse_report(report, encoded_size=len(raw)))
        ack, reason = await worker.report(raw, report.node)
        assert ack.accepted and ack.sequence == report.sequence and reason == ""
    there = WorkerTelemetry(worker)
    for kind in KINDS:
        kw = {"group_by": kind, "namespace": "", "source": None, "destination": None}
        got = await there.stat(**kw, window_s=60)  # type: ignore[arg-type]
        assert got and _golden(got) == _golden(here.stat(**kw, window_s=60))  # type: ignore[arg-type]
    src = Selector("deployment", "shop", "web")
    kw2 = {"group_by": "deployment", "namespace": "shop", "source": src, "destination": None}
    assert _golden(await there.stat(**kw2, window_s=60)) == _golden(here.stat(**kw2, window_s=60))  # type: ignore[arg-type]
    for kind in ("deployment", "pod"):
        got_edges = await there.edges(kind=kind, namespace="", window_s=60)
        assert got_edges and got_edges == here.edges(kind=kind, namespace="", window_s=60)
    assert [a.node for a in await there.agents()] == ["node1", "node2", "node3"]
    assert await there.enrolled_pods() == here.enrolled_pods()
    assert worker.gauges[0] == len(here.store.request_series) + len(here.store.tcp_series)


async def test_reports_are_checked_in_the_worker_as_in_process(worker: TelemetryWorker) -> None:
    index = ClusterIndex(trust_domain="cluster.local")
    service = WorkerTelemetryService(worker, index=index, registry=CollectorRegistry())
    await worker.set_known(frozenset({"node1"}))
    agent = ReportBuilder(node="node9")
    agent.request([900], src=WEB, dst=VOTING)
    ack, reason = await worker.report(agent.report().SerializeToString(), "node9")
    assert not ack.accepted and reason == "unknown_agent" and "node9" in ack.reason
    ack, reason = await worker.report(agent.report().SerializeToString(), "node1")
    assert not ack.accepted and reason == "node_mismatch"
    ack, reason = await worker.report(b"\xff\xff not a report", "node1")
    assert not ack.accepted and reason == "garbled"
    ok = ReportBuilder(node="node1")
    ok.request([900], src=peer("shop", "web", "web-0"), dst=EMOJI)
    raw = ok.report().SerializeToString()
    ack, reason = await worker.report(raw, "node1")
    assert ack.accepted
    service.settled(raw, ack, reason, authenticated_node="node1")
    assert service.reports.labels("accepted", "")._value.get() == 1


async def test_a_killed_worker_process_is_replaced() -> None:
    worker = TelemetryWorker("process", max_series=100, max_cells=1_000, log_level="WARNING")
    try:
        first = await worker.start()
        assert first != os.getpid()
        await worker.set_known(frozenset({"node1"}))
        os.kill(first, signal.SIGKILL)
        agent = ReportBuilder(node="node2")
        agent.request([900], src=WEB, dst=EMOJI)
        # The new worker still knows which nodes may report.
        ack, reason = await worker.report(agent.report().SerializeToString(), "node2")
        assert reason == "unknown_agent"
        assert worker.restarts == 1 and worker.pid not in (None, first)
    finally:
        worker.close()


async def test_a_question_waits_behind_one_small_batch_of_reports(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With 100 agents' reports waiting, a Stat asked now is answered after the batch in flight
    (at most 16 reports: main handed over 32 at a time, a cold Stat waiting behind them), not
    after every report that was waiting."""
    from controlplane import telemetry_child

    handled = 0
    reports = telemetry_child.reports

    def counted(batch):  # type: ignore[no-untyped-def]
        nonlocal handled
        handled += len(batch)
        return reports(batch)

    monkeypatch.setattr(telemetry_child, "reports", counted)
    w = TelemetryWorker("thread", max_series=20_000, max_cells=400_000)
    await w.start()
    try:
        rng = random.Random(8)
        raws = [_report(rng, f"node{i % 10}").report().SerializeToString() for i in range(100)]
        waiting = [asyncio.ensure_future(w.report(raw, None)) for raw in raws]
        for _ in range(3):
            await asyncio.sleep(0)  # the reports queue up; the first batch goes to the worker
        before = await w.call(lambda: handled)
        assert 0 < before <= 16, before
        await asyncio.gather(*waiting)
        assert handled == 100
    finally:
        w.close()
