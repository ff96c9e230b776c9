"""Removing nodemesh from a running lab, and pods created while the agents cannot be reached.

Uninstall is the documented pipe (`nodemesh uninstall | ... delete --ignore-not-found -f -`, the
lab's delete standing in for kubectl's): every node's conflist and CNI bin dir end up byte for
byte as before install, nodemesh's files leave the node's run dir, and meshed pods that were
running keep serving (ready, reachable through their Service), with no redirect rule left in
them. With the agents unreachable, a pod of an unmeshed namespace starts and a pod of a meshed
one waits (code 11) until an agent answers again.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodemesh.lab.network import NODE_IPAM_DIR, NodeSpec, bridge_conflist
from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import lab_up, pods
from tests.integration.labkit import run as nm

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODES = ("node1", "node2")

APP = """\
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}{labels}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        command: [python3, -m, http.server, "8080", --bind, 0.0.0.0]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web-svc, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports:
  - {{port: 8080, targetPort: 8080}}
"""
MESHED = ", labels: {nodemesh.io/mesh: enabled}"


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    with lab_up("cnl") as paths:
        yield paths


def apply(paths: LabPaths, tmp_path: Path, *, ns: str, meshed: bool, replicas: int) -> None:
    app = tmp_path / f"{ns}.yml"
    app.write_text(APP.format(ns=ns, labels=MESHED if meshed else "", replicas=replicas))
    nm("lab", "apply", "--name", paths.name, "-f", str(app))


def nodemesh_rules(paths: LabPaths, ns: str, pod: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", paths.pod_netns(ns, pod), "iptables-legacy-save", "-t", "nat"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(1 for ln in out.splitlines() if ln.startswith("-A") and "NODEMESH" in ln)


def http_status(paths: LabPaths, ns: str, pod: str, url: str) -> str:
    res = nm("lab", "exec", "--name", paths.name, "-n", ns, f"pod/{pod}", "--",
             "curl", "-s", "-o", "/dev/null", "-m", "5", "-w", "%{http_code}", url,
             check=False)  # fmt: skip
    return res.stdout.strip()


def wait_for(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def all_ready(paths: LabPaths, ns: str, count: int) -> list[dict[str, Any]]:
    now = pods(paths, ns)
    return now if len(now) == count and all(p["ready"] for p in now) else []


def test_documented_uninstall_restores_every_node_and_meshed_pods_keep_serving(
    lab: LabPaths, tmp_path: Path
) -> None:
    # What each node held before install-cni ran: the lab's own bridge conflist, no plugin.
    before = {
        n: json.dumps(bridge_conflist(NodeSpec(i), ipam_dir=NODE_IPAM_DIR), indent=2).encode()
        for i, n in enumerate(NODES, start=1)
    }
    apply(lab, tmp_path, ns="shop", meshed=True, replicas=4)
    running = wait_for("meshed pods ready", lambda: all_ready(lab, "shop", 4), timeout=120)
    assert {p["node"] for p in running} == set(NODES)
    for p in running:
        assert nodemesh_rules(lab, "shop", p["name"]) > 0, p["name"]
    restarts = {p["name"]: p["restarts"] for p in running}

    # An agent pod deleted while its DaemonSet stays (what a rollout or an eviction does) is
    # not an uninstall: its node keeps nodemesh-cni, with its executable, all along.
    plugged = lab.cni_conf_dir("node1") / "10-lab-bridge.conflist"
    executable = lab.cni_bin_dir("node1") / "nodemesh-cni"
    samples: list[bool] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append("nodemesh-cni" in plugged.read_text() and executable.exists())
            time.sleep(0.05)

    [old] = [p for p in pods(lab, "nodemesh") if "agent" in p["name"] and p["node"] == "node1"]
    victim = tmp_path / "agent-pod.yml"
    victim.write_text(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {old['name']}, namespace: nodemesh}}\n"
        "spec: {containers: [{name: agent, command: [nodemesh-agent]}]}\n"
    )
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        nm("lab", "delete", "--name", lab.name, "-f", str(victim))
        wait_for(
            "a new agent on node1",
            lambda: [p for p in pods(lab, "nodemesh") if "agent" in p["name"] and p["ready"]
                     and p["node"] == "node1" and p["name"] != old["name"]],
        )  # fmt: skip
        time.sleep(6)  # past the old pod's grace period
    finally:
        sampling.set()
        sampler.join()
    assert samples and all(samples), f"{samples.count(False)} of {len(samples)} samples unplugged"
    for p in running:
        assert nodemesh_rules(lab, "shop", p["name"]) > 0, p["name"]

    listing = nm("uninstall").stdout
    out = nm("lab", "delete", "--name", lab.name, "--ignore-not-found", "-f", "-", stdin=listing)
    assert "Namespace nodemesh deleted" in out.stdout, out.stdout
    wait_for("agents gone", lambda: not pods(lab, "nodemesh"))

    def node_restored() -> bool:
        return all(
            not (lab.run_dir(n) / "cni.sock").exists()
            and sorted(p.name for p in lab.cni_conf_dir(n).iterdir()) == ["10-lab-bridge.conflist"]
            for n in NODES
        )

    wait_for("every node restored", node_restored, timeout=30)
    for n in NODES:
        conflist = lab.cni_conf_dir(n) / "10-lab-bridge.conflist"
        assert conflist.read_bytes() == before[n], n
        assert list(lab.cni_bin_dir(n).iterdir()) == [], n
        left = {p.name for p in lab.run_dir(n).iterdir()}
        assert not left & {"agent-state.json", "meshed-namespaces.json", "uninstalling"}, left

    # The pods that were meshed keep serving: no rule sends their traffic to a missing agent,
    # their readiness probes pass, clients reach them through the Service and by pod IP.
    for p in running:
        assert nodemesh_rules(lab, "shop", p["name"]) == 0, p["name"]
    time.sleep(3)  # a few probe periods
    after = all_ready(lab, "shop", 4)
    assert after, pods(lab, "shop")
    assert {p["name"]: p["restarts"] for p in after} == restarts
    client = running[0]["name"]
    for target in ["http://web-svc:8080/", *(f"http://{p['ip']}:8080/" for p in running)]:
        assert http_status(lab, "shop", client, target) == "200", target


def test_without_reachable_agents_only_meshed_pods_wait(lab: LabPaths, tmp_path: Path) -> None:
    apply(lab, tmp_path, ns="shop", meshed=True, replicas=2)
    wait_for("meshed pods ready", lambda: all_ready(lab, "shop", 2), timeout=120)
    records = [lab.run_dir(n) / "meshed-namespaces.json" for n in NODES]
    wait_for(
        "each agent to record shop as meshed",
        lambda: all(r.exists() and "shop" in json.loads(r.read_text())["namespaces"]
                    for r in records),
    )  # fmt: skip
    # The agents stop answering (their socket is gone, as after a crash); they stay running so
    # that putting the socket back brings them back without a restart.
    sockets = [lab.run_dir(n) / "cni.sock" for n in NODES]
    for s in sockets:
        s.rename(s.with_name("cni.sock.away"))
    try:
        apply(lab, tmp_path, ns="docs", meshed=False, replicas=2)
        apply(lab, tmp_path, ns="shop", meshed=True, replicas=4)
        docs = wait_for("unmeshed pods to start", lambda: all_ready(lab, "docs", 2))
        assert {p["node"] for p in docs} == set(NODES)
        for p in docs:
            assert nodemesh_rules(lab, "docs", p["name"]) == 0
        time.sleep(3)
        waiting = [p for p in pods(lab, "shop") if not p["ready"]]
        assert len(waiting) == 2, pods(lab, "shop")
        for p in waiting:
            assert "code 11" in p["message"] and "namespace shop is meshed" in p["message"], p
    finally:
        for s in sockets:
            s.with_name("cni.sock.away").rename(s)
    ready = wait_for(
        "meshed pods to start once the agents answer", lambda: all_ready(lab, "shop", 4)
    )
    for p in ready:
        assert nodemesh_rules(lab, "shop", p["name"]) > 0, p["name"]
