"""A real public API gRPC server on loopback, run in its own thread and event loop so the
blocking CLI (click's CliRunner) can call it from the test thread; golden-file comparison."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import cli_world
import grpc

from controlplane.access import Gate, LabAccessReview
from controlplane.destination import DestinationHub
from controlplane.index import ClusterIndex
from controlplane.public_api import PublicService
from controlplane.sources.events import KINDS, EventType, KindSynced, ObjectChanged
from controlplane.tap import AgentTapService, TapBroker
from controlplane.telemetry import TelemetryStore
from controlplane.telemetry_port import StoreTelemetry
from nodemesh.api import public_pb2_grpc, tap_pb2_grpc
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "cli"
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class ApiServer:
    """ClusterIndex + TelemetryStore + TapBroker behind PublicService and AgentTap."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.index = ClusterIndex()
        self.store = TelemetryStore(clock=self.clock)
        self.broker = TapBroker(self.index)
        # Callers are checked as in a lab: its grant table, its admin's token.
        self.access = Path(tempfile.mkdtemp(prefix="nodemesh-cli-access-"))
        create_lab_access(self.access)
        self.admin_token = (self.access / ADMIN_TOKEN_FILE).read_text().strip()
        self.hub = DestinationHub(self.index)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.address = self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> str:
        public = PublicService(
            index=self.index,
            telemetry=StoreTelemetry(self.store),
            broker=self.broker,
            hub=self.hub,
            source_name="local",
            gate=Gate(LabAccessReview(self.access / ACCESS_FILE)),
        )
        self.server = grpc.aio.server()
        public_pb2_grpc.add_PublicServicer_to_server(public, self.server)
        tap_pb2_grpc.add_AgentTapServicer_to_server(AgentTapService(self.broker), self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    def load_world(self, *, traffic: bool = True) -> None:
        async def feed() -> None:
            for obj in cli_world.objects():
                self.index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
            for kind in KINDS:
                self.index.apply(KindSynced(kind))
            if traffic:
                cli_world.send_traffic(self.store)
                self.clock.now = T0 + 10  # the reports' bucket is complete: in the window

        self.run(feed())

    def close(self) -> None:
        async def stop() -> None:
            await self.server.stop(grace=None)
            # Streams still parked in the loop (a tap's queue.get) end here, not at loop close.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        shutil.rmtree(self.access, ignore_errors=True)

    def add_user(self, token: str, username: str) -> None:
        """A user the grant table knows but grants nothing."""
        path = self.access / ACCESS_FILE
        table = json.loads(path.read_text())
        digest = hashlib.sha256(token.encode()).hexdigest()
        table["users"].append({"token_sha256": digest, "username": username, "groups": []})
        path.write_text(json.dumps(table))


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("NODEMESH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with NODEMESH_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"output differs from {path} (NODEMESH_UPDATE_GOLDEN=1)"
