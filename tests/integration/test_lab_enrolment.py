"""Enrolment life cycle in the lab: with the agents gone a new meshed pod waits (its CNI ADD
fails with "try again later" and the runtime retries) and starts, enrolled, once they are back;
un-meshing a namespace removes its pods' rules; deleting the agents' DaemonSet takes
nodemesh-cni out of every node's conflist again."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.cli.lab_mesh import mesh_objects
from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import lab_up, pods
from tests.integration.labkit import run as nm

pytestmark = [pytest.mark.root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]

APP = """\
apiVersion: v1
kind: Namespace
metadata: {{name: shop{labels}}}
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
      containers:
      - {{name: cart, command: [sleep, "3600"]}}
"""
MESHED = ", labels: {nodemesh.io/mesh: enabled}"


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    with lab_up("e") as paths:
        yield paths


def nodemesh_rules(paths: LabPaths, pod: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", paths.pod_netns("shop", pod), "iptables-legacy-save", "-t", "nat"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(1 for ln in out.splitlines() if ln.startswith("-A") and "NODEMESH" in ln)


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_pod_waits_for_the_agent_then_unmesh_then_uninstall(lab: LabPaths, tmp_path: Path) -> None:
    mesh = mesh_objects(lab)
    ds_file = tmp_path / "agents.yml"
    ds_file.write_text(yaml.safe_dump(next(d for d in mesh if d["kind"] == "DaemonSet")))
    conflists = [lab.cni_conf_dir(n) / "10-lab-bridge.conflist" for n in ("node1", "node2")]

    # Agents away: delete their DaemonSet, but keep nodemesh-cni in the conflists as a node whose
    # agent crashed would (the watcher removes it on exit, so put it back by hand).
    saved = [c.read_text() for c in conflists]
    plugins = [lab.cni_bin_dir(n) / "nodemesh-cni" for n in ("node1", "node2")]
    binaries = [p.read_bytes() for p in plugins]
    nm("lab", "delete", "--name", lab.name, "-f", str(ds_file))
    wait_for("agents gone", lambda: not [p for p in pods(lab, "nodemesh") if "agent" in p["name"]])
    # A deleted pod leaves `lab status` at once while its containers get their grace period; the
    # watcher uninstalls and the agent closes its CNI socket on the way out: wait for both.
    sockets = [lab.run_dir(n) / "cni.sock" for n in ("node1", "node2")]
    wait_for(
        "the watchers to uninstall and the agents to exit",
        lambda: not any("nodemesh-cni" in c.read_text() or p.exists() or s.exists()
                        for c, p, s in zip(conflists, plugins, sockets, strict=True)),
    )  # fmt: skip
    for c, text, plugin, binary in zip(conflists, saved, plugins, binaries, strict=True):
        c.write_text(text)
        plugin.write_bytes(binary)
        plugin.chmod(0o755)

    app = tmp_path / "app.yml"
    app.write_text(APP.format(labels=MESHED, replicas=2))
    nm("lab", "apply", "--name", lab.name, "-f", str(app))
    time.sleep(3)
    waiting = pods(lab, "shop")
    assert len(waiting) == 2 and not any(p["ready"] for p in waiting), waiting
    assert all("code 11" in p["message"] for p in waiting), [p["message"] for p in waiting]

    nm("lab", "apply", "--name", lab.name, "-f", str(ds_file))
    ready = wait_for("pods to start once the agents are back",
                     lambda: [p for p in pods(lab, "shop") if p["ready"]] if all(
                         p["ready"] for p in pods(lab, "shop")) else [], timeout=60)  # fmt: skip
    assert len(ready) == 2
    for p in ready:
        assert nodemesh_rules(lab, p["name"]) > 0

    # Un-mesh the namespace: the agents remove the pods' rules.
    app.write_text(APP.format(labels="", replicas=2))
    nm("lab", "apply", "--name", lab.name, "-f", str(app))
    wait_for("rules removed", lambda: all(nodemesh_rules(lab, p["name"]) == 0 for p in ready))

    # Uninstall the agents: nodemesh-cni leaves every conflist.
    nm("lab", "delete", "--name", lab.name, "-f", str(ds_file))
    wait_for(
        "conflists restored", lambda: all("nodemesh-cni" not in c.read_text() for c in conflists)
    )
    for c in conflists:
        assert [p["type"] for p in json.loads(c.read_text())["plugins"]] == ["bridge"]
