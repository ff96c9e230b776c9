"""The control plane as a pod of namespace nodemesh in the lab: its local source follows
`lab apply`/`lab delete`, an agent-like gRPC client (TLS, bootstrap token) gets the destination
snapshot and then a delta when a Deployment scales, and the public API answers on localhost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from nodemesh.api import destination_pb2 as dpb
from nodemesh.api import destination_pb2_grpc as dpb_grpc
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.lab.paths import LabPaths
from nodemesh.ports import AGENT_API, PUBLIC_API
from tests.integration.labkit import lab_up, nm
from tests.unit.controlplane.bearer import bearer

pytestmark = [pytest.mark.root, pytest.mark.lab]


APP = """\
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{nodemesh.io/mesh: enabled}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: cart, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: cart}}}}
  template:
    metadata: {{labels: {{app: cart}}}}
    spec:
      serviceAccountName: cart
      containers:
      - {{name: cart, command: [python3, -m, http.server, "8000"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: cart, namespace: shop}}
spec:
  selector: {{app: cart}}
  ports: [{{port: 80, targetPort: 8000}}]
"""


@pytest.fixture
def mesh_lab(tmp_path: Path) -> Iterator[tuple[LabPaths, dict[str, int]]]:
    forward = f"0:nodemesh/nodemesh-controlplane:{AGENT_API}"
    with lab_up("c", "--forward", forward) as paths:
        st = json.loads(nm("lab", "status", "--name", paths.name, "-o", "json"))
        yield (
            paths,
            {
                f["port"]: f["local_port"]
                for f in st["forwards"]
                if f["service"] == "nodemesh-controlplane"
            },
        )


def apply(paths: LabPaths, tmp: Path, replicas: int) -> None:
    f = tmp / f"app-{replicas}.yml"
    f.write_text(APP.format(replicas=replicas))
    nm("lab", "apply", "--name", paths.name, "-f", str(f))


async def next_update(call: Any, timeout: float) -> Any:
    return await asyncio.wait_for(call.read(), timeout)


async def test_destination_snapshot_then_delta_on_scale(
    mesh_lab: tuple[LabPaths, dict[str, int]], tmp_path: Path
) -> None:
    paths, ports = mesh_lab
    apply(paths, tmp_path, replicas=1)
    anchor = (paths.identity / "ca.crt").read_bytes()
    tokens = json.loads((paths.identity / "tokens.json").read_text())
    creds = grpc.ssl_channel_credentials(root_certificates=anchor)
    async with grpc.aio.secure_channel(f"localhost:{ports[AGENT_API]}", creds) as channel:
        stub = dpb_grpc.DestinationStub(channel)
        meta = [("authorization", f"Bearer {tokens['node1']}")]
        call = stub.Subscribe(dpb.SubscribeRequest(node="node1"), metadata=meta)
        services: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while True:
            upd = await next_update(call, 10)
            if upd.HasField("snapshot"):
                for s in upd.snapshot.services:
                    services[s.key.name] = s
                if upd.snapshot.last:
                    break
            assert time.monotonic() < deadline
        assert "nodemesh-controlplane" in services

        # The control plane polls the lab's files: cart may come in the snapshot or just after.
        def cart_endpoints() -> int:
            return len(services["cart"].endpoints) if "cart" in services else 0

        while cart_endpoints() < 1:
            upd = await next_update(call, 10)
            for s in upd.delta.services_updated:
                services[s.key.name] = s
        changed_at = time.monotonic()
        apply(paths, tmp_path, replicas=3)
        while cart_endpoints() < 3:
            upd = await next_update(call, 15)
            for s in upd.delta.services_updated:
                services[s.key.name] = s
        elapsed = time.monotonic() - changed_at
        print(f"scale 1->3: three endpoints in the destination stream after {elapsed:.2f} s")
        call.cancel()

    # The public API, through the localhost forward, sees the Deployment with its 3 pods.
    admin = (paths.access / "admin.token").read_text().strip()
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{ports[PUBLIC_API]}", interceptors=bearer(admin)
    ) as channel:
        public = ppb_grpc.PublicStub(channel)
        version = await public.Version(ppb.VersionRequest(), timeout=5)
        assert version.source == "local"
        workloads = await public.ListWorkloads(ppb.ListWorkloadsRequest(), timeout=5)
        cart = next(w for w in workloads.workloads if w.name == "cart")
        assert cart.pods == 3 and cart.identities == ["spiffe://cluster.local/ns/shop/sa/cart"]

        # lab delete is reflected within about a second.
        f = tmp_path / "app-3.yml"
        nm("lab", "delete", "--name", paths.name, "-f", str(f))
        deadline = time.monotonic() + 3
        while True:
            workloads = await public.ListWorkloads(ppb.ListWorkloadsRequest(), timeout=5)
            if not any(w.name == "cart" for w in workloads.workloads):
                break
            assert time.monotonic() < deadline, "cart still listed after lab delete"
            await asyncio.sleep(0.1)
