"""The lab's static manifests listen and probe on the ports `nodemesh install` renders
(both from nodemesh.ports): a port changed in one place only would leave the lab's forwards,
probes or agents pointing at nothing."""

from __future__ import annotations

from typing import Any

import yaml
from click.testing import CliRunner

from nodemesh import ports
from nodemesh.cli.lab_mesh import mesh_manifest
from nodemesh.cli.main import cli
from nodemesh.lab.paths import LabPaths

_ADDRESS_FLAGS = ("--agent-addr=", "--public-addr=", "--admin-addr=", "--addr=",
                  "--controlplane=", "--public-api=")  # fmt: skip


def _ports_of(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, int]]]:
    """Container name -> (what, port) for every port it listens on, is probed on or dials."""
    out: dict[str, set[tuple[str, int]]] = {}
    for d in docs:
        if d.get("kind") not in ("Deployment", "DaemonSet"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            found = out.setdefault(c["name"], set())
            found |= {("listen", p["containerPort"]) for p in c.get("ports", [])}
            probe = c.get("readinessProbe", {})
            if "httpGet" in probe:
                found.add(("probe", probe["httpGet"]["port"]))
            for word in probe.get("exec", {}).get("command", []):  # the agent's readycheck
                if word.startswith("--port="):
                    found.add(("probe", int(word.removeprefix("--port="))))
            for arg in c.get("args", []):
                for flag in _ADDRESS_FLAGS:
                    if arg.startswith(flag):
                        found.add((flag, int(arg.rpartition(":")[2])))
    return out


def test_lab_and_rendered_manifests_use_the_same_ports() -> None:
    lab = _ports_of(
        [d for d in yaml.safe_load_all(mesh_manifest(LabPaths("t1"), anchor=b"anchor")) if d]
    )
    res = CliRunner().invoke(cli, ["install"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rendered = _ports_of([d for d in yaml.safe_load_all(res.stdout) if d])
    assert {"controlplane", "agent", "dashboard"} <= set(lab)
    for name in ("controlplane", "agent", "dashboard"):
        assert lab[name] == rendered[name], name
    assert lab["controlplane"] >= {("listen", ports.PUBLIC_API), ("listen", ports.AGENT_API),
                                   ("probe", ports.CONTROLPLANE_ADMIN)}  # fmt: skip
    assert ("--controlplane=", ports.AGENT_API) in lab["agent"]
    assert ("probe", ports.AGENT_ADMIN) in lab["agent"]
    assert ("probe", ports.DASHBOARD) in lab["dashboard"]
