"""The lab runs the node agent DaemonSet exactly as `nodemesh install` renders it (issue 13).

- The DaemonSet the lab holds is the rendered one, and its agent container runs as rendered:
  exactly the declared capabilities, a read-only root, the entrypoint as PID 1 of its own PID
  namespace, the node's own hostPaths (its /etc/cni/net.d, /opt/cni/bin, /run/netns, /run/
  xtables.lock under the lab node's directory), the configMap and projected token volumes.
- Today's fix taken out (the rendered DaemonSet without its xtables lock hostPath): a meshed pod
  cannot start, with the read-only root error a cluster showed; with the fix it starts.
- install-cni killed, stopped (a restart), its pod deleted, nodemesh uninstalled and installed
  again, in that order: a conflist never names nodemesh-cni while its executable is missing (a
  sampler reads both nodes' files all along), and a pod created after each step starts.

One lab, one test (the leak check looks at each test alone, and rolling the agents renames
their pods); nodes node1, node2, no demo app (test_lab_mesh covers emojivoto's enrolment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.cli.install import agent as agent_install
from nodemesh.cli.lab_mesh import LAB_VALUES, mesh_manifest
from nodemesh.lab.paths import LabPaths
from nodemesh.lab.procs import children

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
NODES = ("node1", "node2")
PREFIX = "rda"  # NODEMESH_LEAKCHECK_ONLY=rda for this module alone


def nm(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run([NODEMESH, *args], input=stdin, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    name = PREFIX + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0",
           "--dashboard-port", "0")  # fmt: skip
        yield LabPaths(name)
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def status(paths: LabPaths) -> dict[str, Any]:
    return json.loads(nm("lab", "status", "--name", paths.name, "-o", "json"))  # type: ignore[no-any-return]


def pods(paths: LabPaths, ns: str) -> list[dict[str, Any]]:
    return [p for p in status(paths)["pods"] if p["namespace"] == ns]


def wait_for(what: str, check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def stored(paths: LabPaths, kind: str, ns: str, name: str) -> dict[str, Any]:
    return yaml.safe_load((paths.objects / kind / ns / f"{name}.yaml").read_text())  # type: ignore[no-any-return]


def container_pid(paths: LabPaths, pod: str, container: str) -> int:
    """Host PID of a container's entrypoint (the child of the lab's container wrapper)."""
    obj = stored(paths, "Pod", "nodemesh", pod)
    cid = next(c for c in obj["status"]["containerStatuses"] if c["name"] == container)
    wrapper = int(cid["containerID"].removeprefix("lab://"))
    return wait_for(f"{pod}/{container} entrypoint", lambda: (children(wrapper) or [0])[0])  # type: ignore[no-any-return]


def agent_pods(paths: LabPaths) -> list[dict[str, Any]]:
    return [p for p in pods(paths, "nodemesh") if p["name"].startswith("nodemesh-agent-")]


def agents_ready(paths: LabPaths) -> list[dict[str, Any]]:
    now = agent_pods(paths)
    return now if len(now) == 2 and all(p["ready"] for p in now) else []


def start_pod(paths: LabPaths, tmp: Path, ns: str, name: str, *, meshed: bool) -> None:
    labels = ", labels: {nodemesh.io/mesh: enabled}" if meshed else ""
    f = tmp / f"{ns}-{name}.yml"
    f.write_text(
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}{labels}}}\n---\n"
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\n"
        "spec:\n  containers:\n  - name: web\n    command: [python3, -m, http.server, '8080']\n"
        "    securityContext: {capabilities: {drop: [ALL]}}\n"
    )
    nm("lab", "apply", "--name", paths.name, "-f", str(f))


def pod_ready(paths: LabPaths, ns: str, name: str) -> bool:
    return any(p["name"] == name and p["ready"] for p in pods(paths, ns))


def the_agent_daemonset_is_the_rendered_one_and_runs_as_rendered(lab: LabPaths) -> None:
    rendered = agent_install.daemonset(LAB_VALUES)
    ds = stored(lab, "DaemonSet", "nodemesh", "nodemesh-agent")
    assert ds["spec"]["updateStrategy"] == rendered["spec"]["updateStrategy"]
    assert ds["spec"]["template"]["spec"] == rendered["spec"]["template"]["spec"]
    agents = wait_for("agents ready", lambda: agents_ready(lab))
    pod = next(p for p in agents if p["node"] == "node1")
    pid = container_pid(lab, pod["name"], "agent")
    proc = {
        k: v.strip()
        for k, v in (
            ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    }
    caps = {12: "NET_ADMIN", 13: "NET_RAW", 21: "SYS_ADMIN"}
    assert int(proc["CapBnd"], 16) == sum(1 << n for n in caps), proc["CapBnd"]
    assert proc["NSpid"].split()[-1] == "1"  # the entrypoint is PID 1 of its own PID namespace
    mounts = {
        ln.split()[4]: ln.split()[5].split(",")
        for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    }
    assert "ro" in mounts["/"], mounts["/"]
    # (mountinfo names /var/run/... by its real path, /run/...)
    for writable in ("/run/xtables.lock", "/run/nodemesh", "/run/netns", "/tmp"):
        assert "rw" in mounts[writable], (writable, mounts[writable])
    assert "ro" in mounts["/etc/nodemesh/trust"] and "ro" in mounts["/run/secrets/nodemesh/token"]
    root = Path(f"/proc/{pid}/root")
    # The configMap's trust anchor is the lab's; the projected token is node1's agent token.
    assert (root / "etc/nodemesh/trust/ca.crt").read_bytes() == (
        lab.identity / "ca.crt"
    ).read_bytes()
    token = (root / "run/secrets/nodemesh/token/token").read_text().strip()
    assert token == (lab.agent_credentials("node1") / "token").read_text().strip()
    # hostPaths are the lab node's own: its run dir holds the agent's socket and state.
    assert (lab.run_dir("node1") / "cni.sock").is_socket()
    assert (lab.node_dir("node1") / "run" / "xtables.lock").is_file()
    # install-cni wrote the node's conflist and plugin through /host/..., which the image has.
    conf = json.loads((lab.cni_conf_dir("node1") / "10-lab-bridge.conflist").read_text())
    entry = next(p for p in conf["plugins"] if p["type"] == "nodemesh-cni")
    assert entry["agentSocket"] == f"{agent_install.RUN_DIR}/cni.sock", entry
    assert os.access(lab.cni_bin_dir("node1") / "nodemesh-cni", os.X_OK)


def without_xtables_lock(ds: dict[str, Any]) -> None:
    """The rendered DaemonSet as it was before issue 13's item 1."""
    spec = ds["spec"]["template"]["spec"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "xtables-lock"]
    for c in spec["containers"]:
        c["volumeMounts"] = [m for m in c["volumeMounts"] if m["name"] != "xtables-lock"]


def apply_mesh(paths: LabPaths, **kw: Any) -> None:
    nm("lab", "apply", "--name", paths.name, "-f", "-", stdin=mesh_manifest(paths, **kw))
    nm("lab", "rollout", "status", "--name", paths.name, "-n", "nodemesh", "ds/nodemesh-agent",
       "--timeout", "180")  # fmt: skip


def without_the_xtables_lock_volume_no_meshed_pod_starts(lab: LabPaths, tmp_path: Path) -> None:
    apply_mesh(lab, change_daemonset=without_xtables_lock)
    try:
        start_pod(lab, tmp_path, "locked", "web", meshed=True)

        def agent_logs() -> str:
            return "".join(
                (lab.logs("nodemesh", p["name"]) / "agent.log").read_text() for p in agent_pods(lab)
            )

        wait_for("the agent's enrolment error", lambda: "can't open lock file /run/xtables.lock: "
                 "Read-only file system" in agent_logs())  # fmt: skip
        pod = next(p for p in pods(lab, "locked") if p["name"] == "web")
        assert not pod["ready"] and "xtables.lock" in pod["message"], pod
    finally:
        apply_mesh(lab)
    wait_for("the meshed pod to start with the rendered DaemonSet",
             lambda: pod_ready(lab, "locked", "web"), timeout=120)  # fmt: skip


class Sampler(threading.Thread):
    """Reads both nodes' conflist and plugin executable every ~2 ms; counts samples in which a
    conflist names nodemesh-cni (before and after looking at the executable) while the
    executable is missing."""

    def __init__(self, paths: LabPaths) -> None:
        super().__init__(daemon=True)
        self.paths, self.halt = paths, threading.Event()
        self.samples, self.unplugged, self.plugged = 0, [], 0

    def run(self) -> None:
        while not self.halt.is_set():
            for n in NODES:
                conflist = self.paths.cni_conf_dir(n) / "10-lab-bridge.conflist"
                binary = self.paths.cni_bin_dir(n) / "nodemesh-cni"
                try:
                    before = "nodemesh-cni" in conflist.read_text()
                    there = os.access(binary, os.X_OK)
                    after = "nodemesh-cni" in conflist.read_text()
                except OSError:
                    continue
                self.samples += 1
                self.plugged += before
                if before and after and not there:
                    self.unplugged.append((time.time(), n))
            time.sleep(0.002)


def install_cni_killed_restarted_and_uninstalled_never_leaves_an_entry_without_binary(
    lab: LabPaths, tmp_path: Path
) -> None:
    wait_for("agents ready", lambda: agents_ready(lab))
    sampler = Sampler(lab)
    sampler.start()
    steps = []

    def step(name: str) -> None:
        steps.append(name)
        pod = f"step{len(steps)}"
        start_pod(lab, tmp_path, "free", pod, meshed=False)
        start_pod(lab, tmp_path, "shop", pod, meshed=True)
        wait_for(f"pods created after {name} to start",
                 lambda: pod_ready(lab, "free", pod) and pod_ready(lab, "shop", pod),
                 timeout=120)  # fmt: skip

    try:
        node1 = next(p for p in agent_pods(lab) if p["node"] == "node1")["name"]
        os.kill(container_pid(lab, node1, "install-cni"), signal.SIGKILL)
        step("install-cni killed")
        os.kill(container_pid(lab, node1, "install-cni"), signal.SIGTERM)
        step("install-cni stopped (a restart: its DaemonSet stays)")
        pod_doc = yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": node1, "namespace": "nodemesh"},
             "spec": {"containers": [{"name": "agent", "command": ["nodemesh-agent"]}]}}
        )  # fmt: skip
        nm("lab", "delete", "--name", lab.name, "-f", "-", stdin=pod_doc)
        wait_for("a new agent pod on node1", lambda: len(agents_ready(lab)) == 2
                 and node1 not in {p["name"] for p in agent_pods(lab)}, timeout=120)  # fmt: skip
        step("its agent pod deleted")
        nm("lab", "delete", "--name", lab.name, "--ignore-not-found", "-f", "-",
           stdin=nm("uninstall"))  # fmt: skip
        wait_for("nodemesh gone from every node", lambda: not any(
            (lab.cni_bin_dir(n) / "nodemesh-cni").exists() for n in NODES))  # fmt: skip
        step("nodemesh uninstalled")
        namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: nodemesh}\n---\n"
        nm("lab", "apply", "--name", lab.name, "-f", "-", stdin=namespace + mesh_manifest(lab))
        wait_for("agents back", lambda: agents_ready(lab), timeout=180)
        step("nodemesh installed again")
    finally:
        sampler.halt.set()
        sampler.join(10)
    assert sampler.samples > 100 and sampler.plugged > 0, (sampler.samples, sampler.plugged)
    assert not sampler.unplugged, f"entry without its binary in {len(sampler.unplugged)} samples"
    assert len(steps) == 5


def test_the_rendered_agent_daemonset_in_the_lab(lab: LabPaths, tmp_path: Path) -> None:
    the_agent_daemonset_is_the_rendered_one_and_runs_as_rendered(lab)
    without_the_xtables_lock_volume_no_meshed_pod_starts(lab, tmp_path)
    install_cni_killed_restarted_and_uninstalled_never_leaves_an_entry_without_binary(lab, tmp_path)
