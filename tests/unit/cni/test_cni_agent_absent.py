"""nodemesh-cni with no agent answering: it holds only pods meant to be meshed.

The agent keeps meshed-namespaces.json beside its socket; the plugin reads it when the socket
does not answer. A pod of a meshed namespace fails with code 11 (the runtime retries), a pod of
any other namespace starts. Driven through env + stdin like a runtime, against both executables.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cni_harness import TestAgent, plugin_config, run_plugin
from nodemesh_cni.protocol import Reply

SHOP = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d4;K8S_POD_UID=5c1b-77"
DOCS = "K8S_POD_NAMESPACE=docs;K8S_POD_NAME=wiki-1;K8S_POD_UID=77"


def write_meshed(sock_dir: Path, *namespaces: str) -> Path:
    path = sock_dir / "meshed-namespaces.json"
    doc = {"version": 1, "node": "node1", "namespaces": list(namespaces)}
    path.write_text(json.dumps(doc))
    return path


def test_pod_of_a_meshed_namespace_waits_with_a_clear_error(plugin: Path, sock_dir: Path) -> None:
    meshed = write_meshed(sock_dir, "shop")
    conf = plugin_config("1.0.0", socket_path=sock_dir / "cni.sock")
    err = run_plugin(plugin, command="ADD", config=conf, cni_args=SHOP).error()
    assert err["code"] == 11
    assert err["msg"] == f"nodemesh agent not reachable at {sock_dir / 'cni.sock'}: try again later"
    assert f"namespace shop is meshed ({meshed})" in str(err["details"])


def test_pod_of_an_unmeshed_namespace_starts_without_the_agent(
    plugin: Path, sock_dir: Path, tmp_path: Path
) -> None:
    write_meshed(sock_dir, "shop")
    log_file = tmp_path / "cni.log"
    conf = plugin_config("1.0.0", socket_path=sock_dir / "cni.sock", log_file=log_file)
    out = run_plugin(plugin, command="ADD", config=conf, cni_args=DOCS)
    assert out.returncode == 0, out.stdout
    assert out.json() == conf["prevResult"]
    assert "namespace docs is not meshed" in log_file.read_text()
    # CHECK agrees: nothing of nodemesh is expected in that pod.
    assert run_plugin(plugin, command="CHECK", config=conf, cni_args=DOCS).returncode == 0
    check = run_plugin(plugin, command="CHECK", config=conf, cni_args=SHOP).error()
    assert check["code"] == 11


def test_without_the_agents_record_every_pod_waits(plugin: Path, sock_dir: Path) -> None:
    # A node whose agent never synchronised: nothing says which namespaces are safe to pass.
    conf = plugin_config("1.0.0", socket_path=sock_dir / "cni.sock")
    err = run_plugin(plugin, command="ADD", config=conf, cni_args=DOCS).error()
    assert err["code"] == 11
    assert "meshed-namespaces.json missing" in str(err["details"])


@pytest.mark.parametrize(
    "content, problem",
    [("{not json", "not JSON"), ('{"version": 7, "namespaces": []}', "unknown format"),
     ('{"version": 1, "namespaces": "shop"}', "namespaces must be a list")],
)  # fmt: skip
def test_a_damaged_record_holds_every_pod_and_names_the_file(
    plugin: Path, sock_dir: Path, content: str, problem: str
) -> None:
    path = sock_dir / "meshed-namespaces.json"
    path.write_text(content)
    conf = plugin_config("1.0.0", socket_path=sock_dir / "cni.sock")
    err = run_plugin(plugin, command="ADD", config=conf, cni_args=DOCS).error()
    assert err["code"] == 11
    assert f"{path}: {problem}" in str(err["details"])


def test_a_configured_record_path_is_used(plugin: Path, sock_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "ns.json"
    elsewhere.write_text(json.dumps({"version": 1, "namespaces": ["docs"]}))
    conf = plugin_config(
        "1.0.0", socket_path=sock_dir / "cni.sock", meshedNamespacesFile=str(elsewhere)
    )
    assert run_plugin(plugin, command="ADD", config=conf, cni_args=DOCS).error()["code"] == 11
    assert run_plugin(plugin, command="ADD", config=conf, cni_args=SHOP).returncode == 0


def test_a_reachable_agent_decides_whatever_the_record_says(plugin: Path, agent: TestAgent) -> None:
    write_meshed(agent.path.parent)  # records no meshed namespace
    agent.respond = lambda req: Reply.to(req, status="error", message="rules failed")
    conf = plugin_config("1.0.0", socket_path=agent.path)
    err = run_plugin(plugin, command="ADD", config=conf, cni_args=DOCS).error()
    assert err["code"] == 100
    assert len(agent.requests) == 1


def test_status_stays_available_while_unmeshed_pods_can_start(plugin: Path, sock_dir: Path) -> None:
    # STATUS "not available" makes a CNI 1.1 runtime hold every pod of the node.
    conf = plugin_config("1.1.0", socket_path=sock_dir / "cni.sock")
    assert run_plugin(plugin, command="STATUS", config=conf).error()["code"] == 50
    write_meshed(sock_dir, "shop")
    run_plugin(plugin, command="STATUS", config=conf).succeeded_silently()
