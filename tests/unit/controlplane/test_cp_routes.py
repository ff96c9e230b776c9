"""Mesh routes through the control plane: both sources, the index, the destination stream."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import cp_objects as k
import pytest
from fake_apiserver import FakeApiServer
from kubernetes import client

sys.path.insert(0, str(Path(__file__).parents[1] / "routing"))
from route_objects import grpc_route, http_route, split  # noqa: E402

from controlplane.destination import DestinationHub, DestinationService  # noqa: E402
from controlplane.feed import Feed  # noqa: E402
from controlplane.index import ClusterIndex, RouteRemoved, RouteUpdated  # noqa: E402
from controlplane.sources.events import EventType, KindSynced, ObjectChanged  # noqa: E402
from controlplane.sources.kube import KubeSource  # noqa: E402
from controlplane.sources.local import LocalSource  # noqa: E402
from nodemesh import tasks  # noqa: E402
from nodemesh.api import destination_pb2 as pb  # noqa: E402
from nodemesh.api import destination_pb2_grpc as pb_grpc  # noqa: E402
from nodemesh.backoff import Backoff  # noqa: E402
from nodemesh.routing import codec  # noqa: E402


def _changed(obj: dict, type_: EventType = EventType.ADDED) -> ObjectChanged:
    return ObjectChanged(type_, obj["kind"], obj)


def test_index_compiles_routes_and_drops_invalid_or_gateway_only_ones(caplog) -> None:
    index = ClusterIndex()
    route = split("web-split", ("web-v1", 90), ("web-v2", 10))
    (change,) = index.apply(_changed(route))
    assert isinstance(change, RouteUpdated)
    assert [b.weight for b in change.route.rules[0].backends] == [90, 10]
    assert index.apply(_changed(route, EventType.MODIFIED)) == []  # nothing new: no delta

    bad = split("web-split", ("web-v1", 90), ("web-v2", 10))
    bad["spec"]["rules"][0]["backendRefs"][1]["weight"] = "ten"
    (removed,) = index.apply(_changed(bad, EventType.MODIFIED))
    assert isinstance(removed, RouteRemoved) and not index.routes
    assert "spec.rules[0].backendRefs[1].weight" in index.route_errors[removed.key]
    assert "spec.rules[0].backendRefs[1].weight" in caplog.text

    gateway_only = http_route("edge")
    gateway_only["spec"]["parentRefs"] = [{"name": "public-gateway"}]
    assert index.apply(_changed(gateway_only)) == []
    (grpc_change,) = index.apply(_changed(grpc_route("emoji")))
    assert grpc_change.route.key.kind == "GRPCRoute"
    (gone,) = index.apply(_changed(grpc_route("emoji"), EventType.DELETED))
    assert isinstance(gone, RouteRemoved)


async def _read(call, timeout: float = 3.0) -> pb.Update:
    msg = await asyncio.wait_for(call.read(), timeout)
    assert msg is not None
    return msg


async def test_agents_get_routes_in_the_snapshot_and_changes_as_deltas(
    tmp_path: Path, grpc_server, channels
) -> None:
    lab = k.LabDir(tmp_path)
    for obj in k.web_app(replicas=1):
        lab.put(obj)
    lab.put(split("web-split", ("web-v1", 90), ("web-v2", 10)))
    index = ClusterIndex()
    hub = DestinationHub(index)
    feed = Feed(LocalSource(tmp_path, interval=0.05), index, [hub.publish])
    feed_task = tasks.spawn(feed.run(), name="feed")
    try:
        address = await grpc_server(
            lambda s: pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), s)
        )
        async with asyncio.timeout(5):
            while not index.synced:
                await asyncio.sleep(0.05)
        call = pb_grpc.DestinationStub(channels(address)).Subscribe(
            pb.SubscribeRequest(node="node1", agent_version="test")
        )
        snap = (await _read(call)).snapshot
        assert snap.last
        (route,) = [codec.route_from_pb(r) for r in snap.routes]
        assert route.key.name == "web-split"
        assert [b.weight for b in route.rules[0].backends] == [90, 10]

        lab.put(split("web-split", ("web-v1", 50), ("web-v2", 50)))
        update = await _read(call)
        (changed,) = update.delta.routes_updated
        assert [b.weight for b in codec.route_from_pb(changed).rules[0].backends] == [50, 50]

        (lab.root / "HTTPRoute" / "emojivoto" / "web-split.yaml").unlink()
        update = await _read(call)
        assert [r.name for r in update.delta.routes_removed] == ["web-split"]
        call.cancel()
    finally:
        await tasks.cancel_all([feed_task])


@pytest.fixture
def apiserver():
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(apiserver):
    cfg = client.Configuration()
    cfg.host = apiserver.host
    with client.ApiClient(cfg) as api_client:
        yield api_client


async def test_kubernetes_source_watches_routes(apiserver, api) -> None:
    apiserver.apply(split("web-split", ("web-v1", 90), ("web-v2", 10)))
    it = KubeSource(api, backoff=lambda: Backoff(first=0.05, cap=0.2)).events()
    try:
        seen: list = []
        async with asyncio.timeout(5):
            while not any(
                isinstance(e, KindSynced) and e.kind == "GRPCRoute" for e in seen
            ) or not any(isinstance(e, KindSynced) and e.kind == "HTTPRoute" for e in seen):
                seen.append(await anext(it))
        routes = [e for e in seen if isinstance(e, ObjectChanged) and e.kind == "HTTPRoute"]
        assert [e.obj["metadata"]["name"] for e in routes] == ["web-split"]
        apiserver.apply(grpc_route("emoji"))
        async with asyncio.timeout(5):
            while True:
                e = await anext(it)
                if isinstance(e, ObjectChanged) and e.kind == "GRPCRoute":
                    assert e.obj["metadata"]["name"] == "emoji"
                    break
    finally:
        await it.aclose()


async def test_a_cluster_without_gateway_api_crds_is_synced_with_no_routes(apiserver, api) -> None:
    apiserver.absent = {"HTTPRoute", "GRPCRoute"}
    for obj in k.web_app(replicas=1):
        apiserver.apply(obj)
    index = ClusterIndex()
    it = KubeSource(api, backoff=lambda: Backoff(first=0.05, cap=0.2)).events()
    try:
        async with asyncio.timeout(5):
            while not index.synced:
                index.apply(await anext(it))
        assert index.services and not index.routes
    finally:
        await it.aclose()
