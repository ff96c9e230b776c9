"""The dashboard and a real public API (index + telemetry store + tap broker) on loopback, run in
a thread of their own so that a synchronous WebDriver can drive a browser against them."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import uvicorn

from controlplane.access import Gate, LabAccessReview
from controlplane.destination import DestinationHub
from controlplane.public_api import PublicService
from controlplane.tap import AgentTapService, TapBroker
from controlplane.telemetry import TelemetryStore
from controlplane.telemetry_port import StoreTelemetry
from dashboard.app import create_app
from nodemesh import tasks
from nodemesh.api import public_pb2_grpc, tap_pb2
from nodemesh.api import tap_pb2_grpc as tap_grpc
from nodemesh.lab.access import ACCESS_FILE, create_lab_access, service_account_token_path
from tests.unit.dashboard.dash_cluster import NS, Clock, Traffic, add_routes, build_index, routed


class LocalStack:
    """start() brings everything up; run(coro_fn) runs code on the stack's loop; stop()."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="browser-stack")
        self.url = ""
        self.address = ""
        self.clock = Clock()
        self.store = TelemetryStore(clock=self.clock)
        self.index = build_index()
        self.traffic = Traffic(self.store)
        self.broker = TapBroker(self.index)
        self.tap_commands: list[tap_pb2.TapCommand] = []
        self._agent: Any = None
        # The dashboard calls the API with its own ServiceAccount token, as in the lab.
        self.access = Path(tempfile.mkdtemp(prefix="nodemesh-browser-access-"))
        create_lab_access(self.access)

    def run(self, fn: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 20) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(fn(), self.loop)
        return fut.result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.run(self._start)

    async def _start(self) -> None:
        public = PublicService(
            index=self.index,
            telemetry=StoreTelemetry(self.store),
            broker=self.broker,
            hub=DestinationHub(self.index),
            source_name="local",
            gate=Gate(LabAccessReview(self.access / ACCESS_FILE)),
        )
        self.grpc = grpc.aio.server()
        public_pb2_grpc.add_PublicServicer_to_server(public, self.grpc)
        tap_grpc.add_AgentTapServicer_to_server(AgentTapService(self.broker), self.grpc)
        self.address = f"127.0.0.1:{self.grpc.add_insecure_port('127.0.0.1:0')}"
        await self.grpc.start()
        token = service_account_token_path(self.access, "nodemesh", "nodemesh-dashboard")
        app = create_app(self.address, ttl=0.5, sample_period=1.0, token_file=str(token))
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", loop="none")
        )
        self.serving = tasks.spawn(self.server.serve(), name="browser-stack-dashboard")
        while not self.server.started:
            if self.serving.done():
                self.serving.result()
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def traffic_step(self, *, voting_failures: int = 6, scale: int = 1) -> None:
        """One 10 s bucket of emojivoto traffic, then time moves on so queries see it."""

        async def step() -> None:
            t = self.traffic
            t.calls("vote-bot", "web", ok=60 * scale)
            t.calls("web", "emoji", ok=120 * scale)
            t.calls("web", "voting", ok=60 * scale - voting_failures, failed=voting_failures,
                    latency_us=8000, node="node2")  # fmt: skip
            self.clock.now += 10

        self.run(step)

    def route_step(self) -> None:
        """web-svc and its HTTPRoute (two rules), and one bucket of vote-bot's requests on it:
        rule 0 45 OK + 5 failed, 3 that no rule took, rule 1 none."""

        async def step() -> None:
            add_routes(self.index)
            routed(self.store, route=f"{NS}/web-api/0", ok=45, failed=5)
            routed(self.store, route="default", ok=3, sequence=1001)
            self.clock.now += 10

        self.run(step)

    def connect_agent(self) -> None:
        """An agent on node1 that answers every tap start with one request, response and end."""

        async def connect() -> None:
            channel = grpc.aio.insecure_channel(self.address)
            call = tap_grpc.AgentTapStub(channel).Connect()
            await call.write(tap_pb2.AgentTapMessage(hello=tap_pb2.AgentHello(node="node1")))

            async def answer() -> None:
                rid = 0
                async for command in call:
                    self.tap_commands.append(command)
                    if command.HasField("start"):
                        for _ in range(3):
                            rid += 1
                            for ev in _request_events(command.start.id, rid):
                                await call.write(tap_pb2.AgentTapMessage(event=ev))

            self._agent = (channel, call, tasks.spawn(answer(), name="browser-stack-agent"))
            while not self.broker.agents:
                await asyncio.sleep(0.01)

        self.run(connect)

    def stop(self) -> None:
        async def stop() -> None:
            if self._agent is not None:
                channel, call, task = self._agent
                call.cancel()
                await tasks.cancel_all([task])
                await channel.close()
            self.server.should_exit = True
            await asyncio.wait_for(self.serving, 10)
            await self.grpc.stop(grace=None)
            # Handlers the gRPC server leaves behind (a tap waiting on its queue) end here,
            # not with the loop, which would leave them pending.
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await tasks.cancel_all(left)

        try:
            if self.url:
                self.run(stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            shutil.rmtree(self.access, ignore_errors=True)


def _request_events(sub: str, rid: int) -> list[tap_pb2.TapEvent]:
    peer = {"namespace": NS, "workload_kind": "Deployment"}
    common = {
        "subscription_id": sub,
        "request_id": rid,
        "node": "node1",
        "direction": tap_pb2.OUTBOUND,
        "tls": True,
        "timestamp_ms": 1_700_000_000_000 + rid,
        "src": tap_pb2.TapPeer(ip="10.244.1.10", pod="web-5d8f7-p0xyz", workload="web", **peer),
        "dst": tap_pb2.TapPeer(ip="10.244.2.13", port=8080, pod="voting-5d8f7-p0xyz",
                               workload="voting", service="voting-svc", **peer),
    }  # fmt: skip
    return [
        tap_pb2.TapEvent(
            **common,
            req=tap_pb2.RequestInit(
                method="POST", path="/emojivoto.v1.VotingService/VoteDoughnut", protocol="gRPC"
            ),
        ),
        tap_pb2.TapEvent(**common, rsp=tap_pb2.ResponseInit(status=200, since_request_us=900)),
        tap_pb2.TapEvent(**common, end=tap_pb2.ResponseEnd(grpc_status=2, since_request_us=1100)),
    ]
