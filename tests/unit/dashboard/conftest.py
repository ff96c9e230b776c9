"""Fixtures: a real public API gRPC server on loopback over a real index and telemetry store,
and the dashboard served by uvicorn on loopback against it; all torn down on any outcome."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
from dash_cluster import Clock, Traffic, build_index
from dash_serve import serve

from controlplane.access import Gate, LabAccessReview
from controlplane.destination import DestinationHub
from controlplane.index import ClusterIndex
from controlplane.public_api import PublicService
from controlplane.tap import AgentTapService, TapBroker
from controlplane.telemetry import TelemetryStore
from controlplane.telemetry_port import StoreTelemetry
from dashboard.app import create_app
from nodemesh.api import public_pb2_grpc, tap_pb2_grpc
from nodemesh.lab.access import ACCESS_FILE, create_lab_access, service_account_token_path


@dataclass
class Cluster:
    index: ClusterIndex
    store: TelemetryStore
    clock: Clock
    traffic: Traffic
    broker: TapBroker
    address: str  # the public API (and agent tap API) on loopback
    token_file: str  # the dashboard's own ServiceAccount token, as the lab writes it
    calls: Counter[str] = field(default_factory=Counter)  # RPCs the server got, by method name


class CountCalls(grpc.aio.ServerInterceptor):
    """Counts the calls the control plane serves: what the dashboard's load on it really is."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return await continuation(details)


@pytest.fixture
async def cluster(tmp_path) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    create_lab_access(tmp_path / "access")
    token_file = service_account_token_path(tmp_path / "access", "nodemesh", "nodemesh-dashboard")
    index = build_index()
    clock = Clock()
    store = TelemetryStore(clock=clock)
    broker = TapBroker(index)
    public = PublicService(
        index=index,
        telemetry=StoreTelemetry(store),
        broker=broker,
        hub=DestinationHub(index),
        source_name="local",
        gate=Gate(LabAccessReview(tmp_path / "access" / ACCESS_FILE)),
    )
    calls: Counter[str] = Counter()
    server = grpc.aio.server(interceptors=[CountCalls(calls)])
    public_pb2_grpc.add_PublicServicer_to_server(public, server)
    tap_pb2_grpc.add_AgentTapServicer_to_server(AgentTapService(broker), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        yield Cluster(index, store, clock, Traffic(store), broker, address, str(token_file), calls)
    finally:
        await server.stop(grace=None)


@dataclass
class Dashboard:
    url: str
    app: object
    http: httpx.AsyncClient

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.app.state.dash  # type: ignore[attr-defined]


@pytest.fixture
async def dashboard(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[Dashboard]:
    options = getattr(request, "param", {})
    app = create_app(
        cluster.address,
        ttl=options.get("ttl", 0.2),
        sample_period=options.get("sample_period", 0.2),
        tap_limit=options.get("tap_limit", 8),
        token_file=options.get("token_file", cluster.token_file),
    )
    server, task, url = await serve(app)
    client = httpx.AsyncClient(base_url=url, timeout=10)
    try:
        yield Dashboard(url, app, client)
    finally:
        await client.aclose()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
