"""With --prometheus-url and no Prometheus there, Stat and Edges fail with UNAVAILABLE naming
the URL (over real gRPC), instead of answering 'no traffic'."""

from __future__ import annotations

import socket
from pathlib import Path

import cp_objects as k
import grpc
import pytest

from controlplane.access import Gate, LabAccessReview
from controlplane.destination import DestinationHub
from controlplane.index import ClusterIndex
from controlplane.prometheus_telemetry import PrometheusTelemetry
from controlplane.public_api import PublicService
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.tap import TapBroker
from controlplane.telemetry import TelemetryStore
from controlplane.telemetry_port import StoreTelemetry
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.lab.access import ACCESS_FILE, ADMIN_TOKEN_FILE, create_lab_access


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_stat_and_edges_name_the_unreachable_prometheus(tmp_path: Path, grpc_server) -> None:  # type: ignore[no-untyped-def]
    index = ClusterIndex()
    for obj in k.web_app(replicas=1):
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    create_lab_access(tmp_path)
    token = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
    url = f"http://127.0.0.1:{_closed_port()}"
    service = PublicService(
        index=index,
        telemetry=PrometheusTelemetry(url, StoreTelemetry(TelemetryStore()), timeout_s=3),
        broker=TapBroker(index),
        hub=DestinationHub(index),
        source_name="local",
        gate=Gate(LabAccessReview(tmp_path / ACCESS_FILE)),
    )
    address = await grpc_server(lambda s: ppb_grpc.add_PublicServicer_to_server(service, s))
    md = [("authorization", f"Bearer {token}")]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ppb_grpc.PublicStub(channel)
        for call in (
            stub.Stat(ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto")),
                      metadata=md, timeout=20),
            stub.Edges(ppb.EdgesRequest(kind="deploy", namespace="emojivoto"), metadata=md,
                       timeout=20),
        ):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"Prometheus at {url} is unreachable" in (err.value.details() or "")
