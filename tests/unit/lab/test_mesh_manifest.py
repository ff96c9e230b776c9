"""The mesh `lab up` applies: the lab's control plane and dashboard, and the node agent exactly as
`nodemesh install` renders it; every container of it can be started as the lab would (each
volume it mounts is declared, each volume kind is one the lab serves), and `lab up --agent-arg`
reaches the agent container only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from nodemesh.cli.install import agent as agent_install
from nodemesh.cli.lab_mesh import LAB_VALUES, mesh_manifest
from nodemesh.lab.container import container_spec
from nodemesh.lab.paths import LabPaths
from nodemesh.lab.volumes import volume_files

ANCHOR = b"-----BEGIN CERTIFICATE-----\nlab\n-----END CERTIFICATE-----\n"


def objects(agent_args: tuple[str, ...] = (), replicas: int = 1) -> list[dict[str, Any]]:
    text = mesh_manifest(LabPaths("t1"), agent_args, anchor=ANCHOR, controlplane_replicas=replicas)
    return [d for d in yaml.safe_load_all(text) if d]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in objs if d["kind"] in ("Deployment", "DaemonSet")]


def test_the_agent_daemonset_is_the_rendered_one() -> None:
    objs = objects()
    (ds,) = [d for d in objs if d["kind"] == "DaemonSet"]
    assert ds == agent_install.daemonset(LAB_VALUES)
    for rendered in agent_install.objects(LAB_VALUES):
        assert rendered in objs, rendered["kind"]
    config = next(d for d in objs if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] == agent_install.CONFIG_MAP
    assert config["data"]["ca.crt"] == ANCHOR.decode()


def test_every_mesh_container_mounts_only_declared_volumes() -> None:
    # The lab refuses to start a container that mounts an undeclared volume (as a kubelet
    # does): the agent pods then stay Pending and `lab up` fails.
    for w in workloads(objects()):
        spec = w["spec"]["template"]["spec"]
        declared = {v["name"] for v in spec.get("volumes", [])}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in declared, (w["metadata"]["name"], c["name"], m["name"])


def test_the_lab_can_build_every_rendered_agent_container(tmp_path: Path) -> None:
    (ds,) = [d for d in objects() if d["kind"] == "DaemonSet"]
    pod = {
        "metadata": {"name": "nodemesh-agent-x", "namespace": "nodemesh", "uid": "u1"},
        "spec": {**ds["spec"]["template"]["spec"], "nodeName": "node1"},
    }
    config = {"data": {"ca.crt": "anchor"}}
    lab_root = tmp_path / "run" / "lab"
    node_root = lab_root / "nodes" / "node1"

    def files(vol: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
        return volume_files(pod, vol, get=lambda ref: config, token=lambda *a: f"tok-{a[2]}")

    for c in pod["spec"]["containers"]:
        spec = container_spec(pod, c, env={"NODE_NAME": "node1"}, volume_dir=tmp_path / "v",
                              lab_root=lab_root, node_root=node_root,
                              volume_files=files)  # fmt: skip
        mounts = {m["target"]: m for m in spec["mounts"]}
        assert spec["readOnlyRoot"] and spec["noNewPrivs"]
        if c["name"] == "agent":
            assert mounts["/run/xtables.lock"]["source"] == str(node_root / "run/xtables.lock")
            assert mounts["/var/run/nodemesh"]["source"] == str(node_root / "run/nodemesh")
            assert mounts["/run/netns"]["hostToContainer"]
            token = Path(mounts["/var/run/secrets/nodemesh/token"]["source"]) / "token"
            assert token.read_text() == "tok-nodemesh" and token.stat().st_mode & 0o077 == 0
        elif c["name"] == "socket-park":
            # Its emptyDir (shared with the agent), and nothing of the node.
            assert agent_install.PARK_DIR in mounts
            assert not any(m["source"].startswith(str(lab_root)) for m in spec["mounts"])
        else:
            assert mounts["/host/etc/cni/net.d"]["source"] == str(node_root / "etc/cni/net.d")
            access = Path(mounts[agent_install.API_ACCESS_DIR]["source"])
            assert (access / "namespace").read_text() == "nodemesh"
            assert (access / "ca.crt").read_text() == "anchor"


def test_agent_args_go_to_the_agent_container_only() -> None:
    plain = workloads(objects())
    extra = workloads(objects(("--gone-pod-grace-seconds=5",)))
    changed = []
    for a, b in zip(plain, extra, strict=True):
        for ca, cb in zip(
            a["spec"]["template"]["spec"]["containers"],
            b["spec"]["template"]["spec"]["containers"],
            strict=True,
        ):
            if ca != cb:
                changed.append(cb["name"])
                assert cb["args"] == [*ca["args"], "--gone-pod-grace-seconds=5"]
    assert changed == ["agent"]


def test_ha_runs_three_control_plane_replicas_and_changes_nothing_else() -> None:
    plain = workloads(objects())
    ha = workloads(objects(replicas=3))
    replicas = {w["metadata"]["name"]: w["spec"].get("replicas") for w in ha}
    assert replicas["nodemesh-controlplane"] == 3
    for a, b in zip(plain, ha, strict=True):
        if b["metadata"]["name"] != "nodemesh-controlplane":
            assert a == b
        else:
            assert {**a["spec"], "replicas": 3} == b["spec"]
