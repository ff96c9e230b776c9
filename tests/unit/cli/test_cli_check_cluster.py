"""`nodemesh check` on a cluster, and which target the CLI picks: the real command and the
real kubernetes client against an API server stub, the public API served by cli_server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_server import ApiServer
from click.testing import CliRunner
from kubernetes import client

from controlplane.sources.events import KindStale
from nodemesh.cli import target as target_mod
from nodemesh.cli.check_cluster import post_checks
from nodemesh.cli.main import cli
from nodemesh.cli.target import Endpoint, TargetError, TargetOptions, select
from tests.unit.controlplane.fake_apiserver import FakeApiServer, version_info

NS = "nodemesh"


@pytest.fixture
def kube() -> Iterator[FakeApiServer]:
    api = FakeApiServer().start()
    api.version = version_info("1.26.3")
    yield api
    api.stop()


def installed(stub: FakeApiServer, *, nodes: tuple[str, ...] = ("node1", "node2")) -> None:
    """A DaemonSet with an agent Ready on every node, as the API server reports it."""
    n = len(nodes)
    stub.fixed[f"/apis/apps/v1/namespaces/{NS}/daemonsets/nodemesh-agent"] = {
        "kind": "DaemonSet",
        "metadata": {"name": "nodemesh-agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "nodemesh-agent"}},
            "template": {"spec": {"containers": [{"name": "agent"}]}},
        },
        "status": {
            "desiredNumberScheduled": n,
            "numberReady": n,
            "currentNumberScheduled": n,
            "numberMisscheduled": 0,
        },
    }
    stub.fixed[f"/api/v1/namespaces/{NS}/pods"] = {
        "kind": "PodList",
        "metadata": {},
        "items": [
            {
                "metadata": {"name": f"nodemesh-agent-{node[-1]}x", "namespace": NS},
                "spec": {"nodeName": node, "containers": [{"name": "agent"}]},
            }
            for node in nodes
        ],
    }
    stub.fixed["/api/v1/nodes"] = {"kind": "NodeList", "metadata": {}, "items": []}


def agent_lines(results) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.name: r.status for r in results if "connected to the control plane" in r.name}


def test_cluster_check_fails_while_no_agent_is_connected(kube, api_server: ApiServer) -> None:
    installed(kube)
    api_server.load_world(traffic=False)
    cfg = client.Configuration()
    cfg.host = kube.host
    with client.ApiClient(cfg) as api:
        endpoint = Endpoint(api_server.address, "cluster", kube=api, token=api_server.admin_token)
        # Both agent pods Ready, neither streaming from the control plane.
        assert agent_lines(post_checks(endpoint, namespace=NS)) == {
            "node1: agent connected to the control plane": "FAIL",
            "node2: agent connected to the control plane": "FAIL",
        }

        async def connect_node1() -> None:
            api_server.hub.subscribe("node1", "test")

        api_server.run(connect_node1())
        assert agent_lines(post_checks(endpoint, namespace=NS)) == {
            "node1: agent connected to the control plane": "ok",
            "node2: agent connected to the control plane": "FAIL",
        }


def test_check_says_not_synced_while_a_watch_is_down(api_server: ApiServer, run) -> None:
    api_server.load_world(traffic=False)

    async def down() -> None:
        api_server.index.apply(KindStale("Pod", 1.0))

    api_server.run(down())
    res = run("check", "-o", "json")
    assert res.exit_code == 1, res.output
    synced = next(c for c in json.loads(res.output)["checks"] if "synced" in c["name"])
    assert synced["status"] == "FAIL" and "watch" in synced["detail"], synced


# -- which target -------------------------------------------------------------------------


@pytest.fixture
def labs(tmp_path: Path, monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Two labs 'running' here, as far as the CLI can tell."""
    names = ["alpha", "beta"]
    for name in names:
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "lab.json").write_text("{}")
    monkeypatch.setattr(target_mod, "RUN_ROOT", tmp_path / "run")
    for var in ("KUBECONFIG", "NODEMESH_LAB", "NODEMESH_API_ADDR"):
        monkeypatch.delenv(var, raising=False)
    return names


def test_kubeconfig_in_the_environment_selects_the_cluster_even_with_labs_running(
    labs, monkeypatch
) -> None:
    assert select(TargetOptions()) == "lab"  # labs here, nothing said: a lab
    monkeypatch.setenv("KUBECONFIG", "/some/kubeconfig")
    assert select(TargetOptions()) == "cluster"
    # nodemesh's own variable is more specific than $KUBECONFIG ...
    assert select(TargetOptions(lab="alpha")) == "lab"
    # ... and a flag beats any variable.
    assert select(TargetOptions(lab="alpha", context="prod")) == "cluster"
    assert select(TargetOptions(api_addr="127.0.0.1:1", kubeconfig="/k")) == "cluster"
    assert select(TargetOptions(lab="alpha", lab_flag=True)) == "lab"
    with pytest.raises(TargetError, match="--lab"):
        select(TargetOptions(lab="alpha", lab_flag=True, context="prod"))


def test_check_pre_with_only_kubeconfig_checks_the_cluster(labs, kube, tmp_path) -> None:
    env = {"KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig"))}
    res = CliRunner().invoke(cli, ["check", "--pre", "-o", "json"], env=env)
    checks = {c["name"]: c for c in json.loads(res.output)["checks"]}
    version = checks["Kubernetes version"]
    assert version["status"] == "ok" and "v1.26.3" in version["detail"], version
    assert "running as root" not in checks  # the lab's machine checks are not what was asked


@pytest.mark.parametrize(
    ("version", "status"), [("1.24.17", "FAIL"), ("1.25.0", "ok"), ("1.26.3", "ok")]
)
def test_check_pre_minimum_kubernetes_version(kube, tmp_path, version, status) -> None:
    kube.version = version_info(version)
    env = {"KUBECONFIG": "", "NODEMESH_LAB": "", "NODEMESH_API_ADDR": ""}
    args = ["check", "--pre", "-o", "json", "--kubeconfig", str(kube.kubeconfig(tmp_path / "k"))]
    res = CliRunner().invoke(cli, args, env=env)
    checks = {c["name"]: c for c in json.loads(res.output)["checks"]}
    assert checks["Kubernetes version"]["status"] == status, checks["Kubernetes version"]
