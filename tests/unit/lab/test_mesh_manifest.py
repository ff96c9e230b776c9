"""The lab's own mesh manifest: every container of it can be started as the lab would (each
volume it mounts is declared), and `lab up --agent-arg` reaches the agent container only."""

from __future__ import annotations

from typing import Any

import yaml

from nodemesh.cli.lab import _mesh_manifest
from nodemesh.lab.paths import LabPaths


def workloads(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d and d["kind"] in ("Deployment", "DaemonSet")]


def test_every_mesh_container_mounts_only_declared_volumes() -> None:
    # The lab refuses to start a container that mounts an undeclared volume (as a kubelet
    # does): the agent pods then stay Pending and `lab up` fails.
    for w in workloads(_mesh_manifest(LabPaths("t1"))):
        spec = w["spec"]["template"]["spec"]
        declared = {v["name"] for v in spec.get("volumes", [])}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in declared, (w["metadata"]["name"], c["name"], m["name"])


def test_agent_args_go_to_the_agent_container_only() -> None:
    plain = workloads(_mesh_manifest(LabPaths("t1")))
    extra = workloads(_mesh_manifest(LabPaths("t1"), ["--gone-pod-grace-seconds=5"]))
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
    plain = workloads(_mesh_manifest(LabPaths("t1")))
    ha = workloads(_mesh_manifest(LabPaths("t1"), controlplane_replicas=3))
    replicas = {w["metadata"]["name"]: w["spec"].get("replicas") for w in ha}
    assert replicas["nodemesh-controlplane"] == 3
    for a, b in zip(plain, ha, strict=True):
        if b["metadata"]["name"] != "nodemesh-controlplane":
            assert a == b
        else:
            assert {**a["spec"], "replicas": 3} == b["spec"]
