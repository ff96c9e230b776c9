"""`lab up --ingress`: nodemesh-ingress as `nodemesh install --ingress` renders it, changed only
where the lab differs from a cluster (its objects instead of the API server, a ClusterIP
Service, no PodDisruptionBudget), and a container the lab can start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.cli.install import ingress as ingress_install
from nodemesh.cli.lab_mesh import LAB_VALUES, mesh_manifest
from nodemesh.lab.container import container_spec
from nodemesh.lab.paths import LabPaths

ANCHOR = b"-----BEGIN CERTIFICATE-----\nlab\n-----END CERTIFICATE-----\n"


def objects(ingress: bool) -> list[dict[str, Any]]:
    text = mesh_manifest(LabPaths("t1"), anchor=ANCHOR, ingress=ingress)
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_only_with_the_flag_and_as_rendered() -> None:
    assert not [o for o in objects(False) if "ingress" in o["metadata"]["name"]]
    objs = objects(True)
    rendered = ingress_install.objects(LAB_VALUES)
    for r in rendered:
        if r["kind"] in ("Namespace", "IngressClass", "ServiceAccount", "ClusterRole",
                         "ClusterRoleBinding"):  # fmt: skip
            assert by_kind(objs, r["kind"], r["metadata"]["name"]) == r
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    svc = by_kind(objs, "Service", "nodemesh-ingress")
    want = next(r for r in rendered if r["kind"] == "Service")
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"] == want["spec"]["ports"]
    dep = by_kind(objs, "Deployment", "nodemesh-ingress")
    want_dep = next(r for r in rendered if r["kind"] == "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    (wc,) = want_dep["spec"]["template"]["spec"]["containers"]
    objects_dir = str(LabPaths("t1").root / "objects")
    assert c["args"] == [a if a != "--source=kubernetes" else "--source=lab" for a in wc["args"]] + [
        f"--state-dir={objects_dir}"]  # fmt: skip
    for key in ("image", "command", "ports", "readinessProbe", "livenessProbe",
                "securityContext", "resources"):  # fmt: skip
        assert c[key] == wc[key], key
    assert dep["spec"]["template"]["metadata"] == want_dep["spec"]["template"]["metadata"]


def test_the_lab_can_build_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hostPath is DirectoryOrCreate: made under a lab root of this test's own, not the
    # machine's /run/nodemesh (it was left there after every run).
    monkeypatch.setattr("nodemesh.lab.paths.RUN_ROOT", tmp_path / "run")
    dep = by_kind(objects(True), "Deployment", "nodemesh-ingress")
    pod = {"metadata": {"name": "nodemesh-ingress-x", "namespace": "nodemesh-ingress", "uid": "u"},
           "spec": {**dep["spec"]["template"]["spec"], "nodeName": "node1"}}  # fmt: skip
    (c,) = pod["spec"]["containers"]
    lab_root = LabPaths("t1").root
    spec = container_spec(pod, c, env={}, volume_dir=tmp_path / "v", lab_root=lab_root)
    mounts = {m["target"]: m for m in spec["mounts"]}
    assert spec["readOnlyRoot"] and spec["uid"] != 0
    assert mounts[str(lab_root / "objects")]["readOnly"]
    assert "/tmp" in mounts
