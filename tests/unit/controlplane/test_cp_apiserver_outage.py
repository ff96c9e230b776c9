"""The control plane process on the `kubernetes` source through an API server outage: what
/ready, /metrics and the public API say while the watches are down, and how soon a change made
right after the server is back reaches the public API."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cp_objects as k
import grpc
import pytest
import yaml
from fake_apiserver import FakeApiServer, Grant
from test_cp_main import free_port, http_get

from controlplane.index import ClusterIndex
from controlplane.main import readiness
from controlplane.sources.events import KINDS, KindStale, KindSynced
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.identity import create_issuer_files


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake",
            }
        )
    )
    return path


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    # The public API asks the API server who calls (TokenReview) and what they may see.
    server.add_user(VIEWER_TOKEN, "viewer")
    server.grants.append(Grant("viewer", "list", "stats.nodemesh.io", "*"))
    for obj in k.web_app(replicas=1):
        server.apply(obj)
    yield server
    server.stop()


@pytest.fixture
def controlplane(tmp_path: Path, apiserver: FakeApiServer, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    create_issuer_files(tmp_path / "identity", nodes=["node1"])
    ports = {name: free_port() for name in ("agent", "public", "admin")}
    log = (tmp_path / "cp.log").open("w+")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane.main",
            "--source=kubernetes",
            f"--kubeconfig={kubeconfig(tmp_path / 'kubeconfig', apiserver.host)}",
            f"--identity-dir={tmp_path / 'identity'}",
            f"--agent-addr=127.0.0.1:{ports['agent']}",
            f"--public-addr=127.0.0.1:{ports['public']}",
            f"--admin-addr=127.0.0.1:{ports['admin']}",
            "--drain-seconds=1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: ready(ports)[0] == 200, 30, proc)
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.seek(0)
        print(log.read())  # shown by pytest when the test failed
        log.close()


def ready(ports: dict[str, int]) -> tuple[int, str]:
    try:
        return http_get(f"http://127.0.0.1:{ports['admin']}/ready")
    except OSError as e:
        return 0, str(e)


def synced_metric(ports: dict[str, int], kind: str) -> str:
    _, metrics = http_get(f"http://127.0.0.1:{ports['admin']}/metrics")
    line = f'nodemesh_source_synced{{kind="{kind}"}} '
    return next((m[len(line) :] for m in metrics.splitlines() if m.startswith(line)), "absent")


VIEWER_TOKEN = "viewer-token"
AUTH = [("authorization", f"Bearer {VIEWER_TOKEN}")]


def public_synced(ports: dict[str, int]) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{ports['public']}") as channel:
        return bool(
            ppb_grpc.PublicStub(channel)
            .Version(ppb.VersionRequest(), timeout=5, metadata=AUTH)
            .synced
        )


def pods_of_web(ports: dict[str, int]) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{ports['public']}") as channel:
        try:
            resp = ppb_grpc.PublicStub(channel).ListWorkloads(
                ppb.ListWorkloadsRequest(namespace="emojivoto"), timeout=5, metadata=AUTH
            )
        except grpc.RpcError:
            return -1  # the API server is still away: callers cannot be authenticated
    return next((w.pods for w in resp.workloads if w.name == "web"), 0)


def wait_for(cond, timeout: float, proc: subprocess.Popen | None = None) -> float:  # type: ignore[no-untyped-def,type-arg]
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"not within {timeout}s"
        if proc is not None:
            assert proc.poll() is None, "the control plane exited"
        time.sleep(0.2)
    return time.monotonic() - start


def test_outage_is_reported_while_it_lasts_and_changes_after_it_arrive_promptly(
    apiserver, controlplane
) -> None:
    proc, ports = controlplane
    status, body = ready(ports)
    assert status == 200 and "not synced" not in body, body
    assert synced_metric(ports, "Pod") == "1.0"
    assert public_synced(ports)
    assert pods_of_web(ports) == 1

    apiserver.go_away()
    # "Down for longer than a few seconds" (5 s): said within a generous bound.
    wait_for(lambda: "Pod for" in ready(ports)[1], 30, proc)
    status, body = ready(ports)
    # Still serving (the agents keep their last state), but saying what is wrong.
    assert status == 200 and "not synced" in body and "last known state" in body, body
    assert synced_metric(ports, "Pod") == "0.0"
    # Callers are authenticated by the API server (TokenReview): while it is away the public
    # API says so rather than answering anyone, as the Kubernetes API's own clients see it.
    with pytest.raises(grpc.RpcError) as refused:
        public_synced(ports)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "TokenReview" in (refused.value.details() or "")

    time.sleep(12)  # long enough for the backoff to have grown well past a few seconds
    apiserver.come_back()
    apiserver.apply(
        k.pod(
            "emojivoto",
            "web-5d8f7-late",
            node="node1",
            ip="10.244.1.77",
            owner=("ReplicaSet", "web-5d8f7"),
            sa="web",
        )
    )
    took = wait_for(lambda: pods_of_web(ports) == 2, 30, proc)
    # A couple of seconds when idle; the bound is generous for a loaded machine and still
    # well below what the grown backoff took before (15-25 s).
    assert took < 8, f"the change made right after the outage took {took:.1f}s"
    wait_for(lambda: public_synced(ports), 10, proc)
    status, body = ready(ports)
    assert status == 200 and "not synced" not in body, body
    assert all(synced_metric(ports, kind) == "1.0" for kind in ("Pod", "Service", "Node"))


def test_readiness_before_the_first_listing_and_while_a_kind_is_stale() -> None:
    index = ClusterIndex()
    for kind in KINDS:
        if kind != "Pod":
            index.apply(KindSynced(kind))
    # Pods could never be listed (the API server refused from the start): not ready.
    index.apply(KindStale("Pod", time.time() - 7))
    ready, body = readiness(index)
    assert not ready and body == "not ready: index not synced (still listing Pod)"
    index.apply(KindSynced("Pod"))
    assert readiness(index) == (True, "ready: index synced") and index.synced
    index.apply(KindStale("Service", time.time() - 12))
    ready, body = readiness(index)
    assert ready and not index.synced
    assert "not synced" in body and "Service for 12s" in body and "last known state" in body
    index.apply(KindSynced("Service"))
    assert readiness(index) == (True, "ready: index synced") and index.synced
