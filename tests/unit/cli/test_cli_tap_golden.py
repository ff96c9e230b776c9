"""tap and top against a real public API server whose tap broker feeds from a connected agent."""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest
from cli_server import ApiServer, assert_golden

from nodemesh.api import tap_pb2 as tpb
from nodemesh.api import tap_pb2_grpc as tpb_grpc


def _peer(app: str, ip: str, port: int, *, service: str = "") -> tpb.TapPeer:
    # The kind as the agent sends it (nodeagent/observe/stats/tapping.py lowercases it).
    return tpb.TapPeer(ip=ip, port=port, namespace="emojivoto", pod=f"{app}-6c9f8-0",
                       workload_kind="deployment", workload=app, service=service,
                       identity=f"spiffe://cluster.local/ns/emojivoto/sa/{app}")  # fmt: skip


def _events(sub: str) -> list[tpb.TapEvent]:
    """Three requests to web: two GET /api/list (200), one POST /api/vote that fails (500)."""
    bot, web = _peer("vote-bot", "10.244.1.13", 41000), _peer("web", "10.244.1.10", 8080)
    out = []
    for rid, (method, path, status, us) in enumerate(
        [("GET", "/api/list", 200, 1800), ("GET", "/api/list", 200, 2400),
         ("POST", "/api/vote?choice=:doughnut:", 500, 5100)], start=1,
    ):  # fmt: skip
        base = dict(subscription_id=sub, request_id=rid, node="node1", direction=tpb.INBOUND,
                    src=bot, dst=web, tls=True, timestamp_ms=1_700_000_000_000 + rid)  # fmt: skip
        out.append(tpb.TapEvent(**base, req=tpb.RequestInit(method=method, scheme="http",
                                authority="web-svc.emojivoto:80", path=path,
                                protocol="HTTP/1.1")))  # fmt: skip
        out.append(tpb.TapEvent(**base, rsp=tpb.ResponseInit(status=status,
                                                               since_request_us=us - 300)))  # fmt: skip
        out.append(tpb.TapEvent(**base, end=tpb.ResponseEnd(since_request_us=us, request_bytes=0,
                                                              response_bytes=120)))  # fmt: skip
    return out


class FakeAgentOnNode1:
    """A real AgentTap client: waits for the tap to start on node1, then sends the events."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.started = threading.Event()
        self.channel = None
        self.task = asyncio.run_coroutine_threadsafe(self._run(), server.loop)

    async def _run(self) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(self.server.address)
        call = tpb_grpc.AgentTapStub(self.channel).Connect()
        await call.write(tpb.AgentTapMessage(hello=tpb.AgentHello(node="node1", agent_version="t")))
        async for command in call:
            if command.WhichOneof("kind") == "start":
                self.started.set()
                for ev in _events(command.start.id):
                    await call.write(tpb.AgentTapMessage(event=ev))

    def close(self) -> None:
        self.task.cancel()

        async def close_channel() -> None:
            if self.channel is not None:
                await self.channel.close()

        self.server.run(close_channel())


@pytest.fixture
def agent(api_server: ApiServer):  # type: ignore[no-untyped-def]
    api_server.load_world(traffic=False)
    agent = FakeAgentOnNode1(api_server)
    try:
        yield agent
    finally:
        agent.close()


@pytest.mark.parametrize("output", ["table", "wide", "json"])
def test_tap_lines(agent, run, output: str) -> None:
    res = run("tap", "deploy/web", "-n", "emojivoto", "--duration", "1.0", "-o", output)
    assert res.exit_code == 0, res.output
    assert agent.started.is_set()
    assert len(res.output.splitlines()) == 9
    # The broker numbers subscriptions per process: the number depends on what ran before.
    text = re.sub(r'"subscription_id": "tap-\d+"', '"subscription_id": "tap-N"', res.output)
    assert_golden(f"tap-deploy-web.{output}", text)
    if output == "json":
        first = json.loads(res.output.splitlines()[0])
        assert first["req"]["path"] == "/api/list"


@pytest.mark.parametrize("output", ["table", "json"])
def test_top_routes(agent, run, output: str) -> None:
    res = run("top", "deploy/web", "-n", "emojivoto", "--duration", "1.0", "-o", output)
    assert res.exit_code == 0, res.output
    assert_golden(f"top-deploy-web.{output}", res.output)
    if output == "table":
        lines = res.output.splitlines()
        assert lines[1].split()[:5] == ["deploy/vote-bot", "deploy/web", "GET", "/api/list", "2"]
        assert lines[2].split()[-1] == "0.00%"
