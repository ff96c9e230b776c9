"""nodemesh-ingress' Kubernetes source through the real client against an API server on
loopback: it lists and watches Ingresses, IngressClasses, Services, EndpointSlices and Secrets,
serves what it saw, follows changes, and lists again after the watch history is gone (410)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from ingress.sources import KubeSource
from ingress.state import Objects, Refusal, Upstream
from nodemesh.tasks import cancel_all, spawn
from tests.unit.controlplane import fake_apiserver
from tests.unit.edge.test_ingress_rules import ing, path, rule
from tests.unit.edge.test_ingress_state import service, slice_of

EXTRA_PATHS = {
    "/apis/networking.k8s.io/v1/ingresses": ("Ingress", "networking.k8s.io/v1"),
    "/apis/networking.k8s.io/v1/ingressclasses": ("IngressClass", "networking.k8s.io/v1"),
    "/api/v1/secrets": ("Secret", "v1"),
}


@pytest.fixture
def apiserver(monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_apiserver.FakeApiServer]:
    for p, kind in EXTRA_PATHS.items():
        monkeypatch.setitem(fake_apiserver.PATHS, p, kind)
    server = fake_apiserver.FakeApiServer().start()
    yield server
    server.stop()


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "not reached in time"
        await asyncio.sleep(0.05)


async def test_lists_watches_and_relists(apiserver: fake_apiserver.FakeApiServer) -> None:
    apiserver.apply(service("web"))
    apiserver.apply(slice_of("web"))
    apiserver.apply(ing("shop", rules=[rule("shop.example", path("/", "web"))],
                        ingressClassName="edge"))  # fmt: skip
    apiserver.apply({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                     "metadata": {"name": "edge"}, "spec": {"controller": "nodemesh.io/ingress"}})  # fmt: skip
    cfg = client.Configuration()
    cfg.host = apiserver.host
    objects = Objects()
    with client.ApiClient(cfg) as api:
        src = KubeSource(api, objects, watch_timeout=5)
        task = spawn(src.run(lambda: None), name="test-kube-source")
        try:
            await until(lambda: src.ready)
            # Served through the IngressClass that names nodemesh's controller.
            assert objects.snapshot().route("shop.example", "/")[1] == Upstream(
                "10.96.0.10", 80, "shop/web:80"
            )
            # A change arrives by the watch: the endpoints go, the backend is 503.
            apiserver.delete("EndpointSlice", "shop", "web-x")
            await until(lambda: isinstance(objects.snapshot().route("shop.example", "/")[1],
                                           Refusal))  # fmt: skip
            # The history is compacted and the watches cut: a relist picks up what changed.
            apiserver.compact()
            apiserver.drop_watches()
            apiserver.apply(slice_of("web"))
            await until(lambda: isinstance(objects.snapshot().route("shop.example", "/")[1],
                                           Upstream))  # fmt: skip
        finally:
            await cancel_all([task])
