"""Live parts: the deployments stream, the tap stream end to end through the control plane's tap
broker to an agent and back, and the load many browsers put on the control plane."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from dash_cluster import NS

from nodemesh import tasks
from nodemesh.api import tap_pb2 as tpb
from nodemesh.api import tap_pb2_grpc as tpb_grpc


async def sse_events(rsp: httpx.Response) -> AsyncIterator[tuple[str, dict]]:
    event, data = "message", []
    async for line in rsp.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


async def next_event(events: AsyncIterator[tuple[str, dict]], timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(anext(events), timeout)


@pytest.mark.parametrize("dashboard", [{"ttl": 1.0, "sample_period": 60}], indirect=True)
async def test_concurrent_browsers_share_control_plane_queries(cluster, dashboard) -> None:
    await asyncio.sleep(0.2)  # the history sampler's first query is out of the way
    before = cluster.calls.copy()
    url = "/api/deployments"
    params = {"namespace": NS}
    answers = await asyncio.gather(*(dashboard.http.get(url, params=params) for _ in range(25)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    for _ in range(10):  # refreshes within the second: answered from the shared answer
        assert (await dashboard.http.get(url, params=params)).status_code == 200
    served = cluster.calls - before
    assert served["Stat"] == 1 and served["ListWorkloads"] == 1, served
    await asyncio.sleep(1.1)
    await dashboard.http.get(url, params=params)
    assert (cluster.calls - before)["Stat"] == 2


async def test_deployments_stream_pushes_new_numbers(cluster, dashboard) -> None:
    params = {"namespace": NS, "interval": "1"}
    async with dashboard.http.stream("GET", "/api/deployments/stream", params=params) as rsp:
        assert rsp.status_code == 200
        assert rsp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(rsp)
        _, first = await next_event(events)
        rows = {r["name"]: r for r in first["deployments"]}
        assert rows["voting"]["requests"] == 0
        cluster.traffic.calls("web", "voting", ok=45, failed=15)
        cluster.clock.now += 10
        for _ in range(5):
            _, update = await next_event(events)
            voting = {r["name"]: r for r in update["deployments"]}["voting"]
            if voting["requests"]:
                break
        assert voting["requests"] == 60 and voting["success_rate"] == pytest.approx(0.75)


class Agent:
    """An agent's end of AgentTap.Connect, read in a task (cancelling a read ends the RPC)."""

    def __init__(self, channel: grpc.aio.Channel, node: str) -> None:
        self.call = tpb_grpc.AgentTapStub(channel).Connect()
        self.node = node
        self.commands: asyncio.Queue[tpb.TapCommand] = asyncio.Queue()
        self.task = tasks.spawn(self._pump(), name=f"test-agent-{node}")

    async def _pump(self) -> None:
        await self.call.write(
            tpb.AgentTapMessage(hello=tpb.AgentHello(node=self.node, agent_version="t"))
        )
        async for command in self.call:
            self.commands.put_nowait(command)

    async def command(self) -> tpb.TapCommand:
        return await asyncio.wait_for(self.commands.get(), 5)

    async def send(self, sub: str, rid: int, kind: str) -> None:
        ev = tpb.TapEvent(
            subscription_id=sub,
            request_id=rid,
            node=self.node,
            direction=tpb.INBOUND,
            tls=True,
            timestamp_ms=1_700_000_000_000,
            src=tpb.TapPeer(ip="10.244.1.12", namespace=NS, pod="vote-bot-x", workload="vote-bot",
                            workload_kind="Deployment", identity="spiffe://cluster.local/ns/emojivoto/sa/vote-bot"),
            dst=tpb.TapPeer(ip="10.244.1.10", port=8080, namespace=NS, pod="web-5d8f7-p0xyz",
                            workload="web", workload_kind="Deployment", service="web-svc"),
        )  # fmt: skip
        if kind == "req":
            ev.req.CopyFrom(tpb.RequestInit(method="POST", path="/api/vote", authority="web-svc"))
        elif kind == "rsp":
            ev.rsp.CopyFrom(tpb.ResponseInit(status=500, since_request_us=1500))
        else:
            ev.end.CopyFrom(tpb.ResponseEnd(since_request_us=2500, response_bytes=12))
        await self.call.write(tpb.AgentTapMessage(event=ev))


async def test_tap_streams_agent_events_and_stops_when_the_page_goes(cluster, dashboard) -> None:
    channel = grpc.aio.insecure_channel(cluster.address)
    agents = [Agent(channel, "node1"), Agent(channel, "node2")]
    try:
        while len(cluster.broker.agents) < 2:
            await asyncio.sleep(0.01)
        params = {"resource": "deploy/web", "namespace": NS, "method": "post", "max_rps": "50"}
        async with dashboard.http.stream("GET", "/api/tap", params=params) as rsp:
            assert rsp.status_code == 200
            events = sse_events(rsp)
            kind, started = await next_event(events)
            assert kind == "started" and started["filter"] == "deploy/web"
            start = (await agents[0].command()).start
            # Every pod of web: any agent may report their inbound requests (observe once).
            assert sorted(p.name for p in start.pods) == ["web-5d8f7-p0xyz", "web-5d8f7-p1xyz"]
            assert start.method == "POST"  # the filter reached the agent
            for k in ("req", "rsp", "end"):
                await agents[0].send(start.id, 7, k)
            got = [(await next_event(events))[1] for _ in range(3)]
            assert dashboard.state.gate.open == 1
        req, rsp_, end = got
        assert req["kind"] == "req" and req["method"] == "POST" and req["path"] == "/api/vote"
        assert req["src"]["who"] == "deployment/vote-bot (vote-bot-x)"
        assert req["dst"]["service"] == "web-svc" and req["tls"] is True
        assert rsp_["kind"] == "rsp" and rsp_["status"] == 500 and rsp_["id"] == req["id"]
        assert end["kind"] == "end" and end["latency_ms"] == 2.5
        # The page went away: the tap ends on the control plane and on the agents.
        stop = await agents[0].command()
        assert stop.stop == start.id
        for _ in range(100):
            if not cluster.broker.streams and dashboard.state.gate.open == 0:
                break
            await asyncio.sleep(0.05)
        assert cluster.broker.streams == {} and dashboard.state.gate.open == 0
    finally:
        for a in agents:
            a.call.cancel()
        await tasks.cancel_all([a.task for a in agents])
        await channel.close()


@pytest.mark.parametrize("dashboard", [{"tap_limit": 1}], indirect=True)
async def test_taps_beyond_the_limit_are_refused_with_429(dashboard) -> None:
    params = {"resource": f"ns/{NS}"}
    async with dashboard.http.stream("GET", "/api/tap", params=params) as first:
        assert first.status_code == 200
        await next_event(sse_events(first))
        second = await dashboard.http.get("/api/tap", params=params)
        assert second.status_code == 429
        assert "limit 1" in second.json()["error"]
