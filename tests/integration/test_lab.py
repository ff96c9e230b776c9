"""The lab end to end, as root: a two-node lab with emojivoto, pods reaching each other and
Services by name across nodes, vote-bot's counters moving, and `lab down` leaving nothing,
also after the supervisor was killed with SIGKILL; bad input creating nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from nodemesh.lab.ledger import Ledger
from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import NODEMESH
from tests.integration.labkit import run as nm

pytestmark = [pytest.mark.root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
EMOJIVOTO = REPO / "manifests" / "examples" / "emojivoto.yml"


def lab_exec(lab: str, pod: str, ns: str, code: str) -> str:
    return nm("lab", "exec", "--name", lab, "-n", ns, pod, "--", "python3", "-c", code).stdout


def status(lab: str) -> dict[str, Any]:
    return json.loads(nm("lab", "status", "--name", lab, "-o", "json").stdout)  # type: ignore[no-any-return]


def lab_namespaces(lab: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(f"nm-{lab}-")]


def lab_processes(paths: LabPaths) -> list[int]:
    from nodemesh.lab.ledger import same_process

    return [
        e.data["pid"]
        for e in Ledger(paths.ledger).entries()
        if e.kind == "process" and same_process(e.data["pid"], e.data.get("start"))
    ]


@pytest.fixture
def lab_name() -> Any:
    name = "t" + uuid.uuid4().hex[:6]
    yield name
    # Whatever happened, leave nothing (the leak fixture then checks it).
    if LabPaths(name).root.exists():
        nm("lab", "down", "--name", name, check=False)


def test_emojivoto_across_two_nodes_then_down_leaves_nothing(lab_name: str) -> None:
    started = time.monotonic()
    nm("lab", "up", "--name", lab_name, "--nodes", "2", "--no-mesh", "--demo", "--demo-port", "0")
    ready_after = time.monotonic() - started
    paths = LabPaths(lab_name)
    st = status(lab_name)
    port = next(f["local_port"] for f in st["forwards"] if f["service"] == "web-svc")
    pods = {p["name"].rsplit("-", 2)[0]: p for p in st["pods"]}
    assert set(pods) == {"web", "emoji", "voting", "vote-bot"}
    assert all(p["ready"] for p in pods.values())
    assert {p["node"] for p in pods.values()} == {"node1", "node2"}, "pods should spread"

    # The objects a control plane will read are there, with real-looking metadata.
    web_pod = pods["web"]
    obj_path = paths.objects / "Pod" / "emojivoto" / f"{web_pod['name']}.yaml"
    import yaml

    obj = yaml.safe_load(obj_path.read_text())
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert obj["status"]["podIP"] == web_pod["ip"] and obj["spec"]["serviceAccountName"] == "web"
    assert (paths.objects / "EndpointSlice" / "emojivoto").is_dir()

    # Pod to pod across nodes, by IP, and to Services by every name form, from a pod on the
    # other node than the target.
    voting, emoji = pods["voting"], pods["emoji"]
    src = next(p for p in pods.values() if p["node"] != emoji["node"])
    src_ref = "deploy/" + src["name"].rsplit("-", 2)[0]
    out = lab_exec(
        lab_name, src_ref, "emojivoto",
        "import socket\n"
        f"for addr in [('{emoji['ip']}', 8080), ('{voting['ip']}', 8080),"
        " ('emoji-svc', 8080), ('voting-svc.emojivoto', 8080),"
        " ('web-svc.emojivoto.svc.cluster.local', 80)]:\n"
        "    s = socket.create_connection(addr, timeout=3); print('ok', addr[0]); s.close()\n",
    )  # fmt: skip
    assert out.count("ok ") == 5, out

    # No namespace of the lab routes outside it (asked of the routing table; nothing is sent).
    for netns in [paths.underlay_netns, paths.node_netns("node1"), paths.node_netns("node2")]:
        res = subprocess.run(["ip", "-n", netns, "route", "get", "1.1.1.1"],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode != 0 and "unreachable" in res.stderr, (netns, res.stdout)
    # Every peer of a node's links lives in a namespace of this lab.
    import re

    for node in ("node1", "node2"):
        links = subprocess.run(["ip", "-n", paths.node_netns(node), "-o", "link"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        peers = re.findall(r"link-netns (\S+)", links)
        assert peers and all(p.startswith(paths.prefix) for p in peers), peers

    # Through the localhost forward, web answers with the list (web -> emoji over gRPC).
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/list", timeout=5) as r:
        assert any(e["shortcode"] == ":doughnut:" for e in json.loads(r.read()))

    # vote-bot's ground truth moves, and doughnut votes fail.
    def bot_stats() -> dict[str, Any]:
        text = lab_exec(
            lab_name, "deploy/vote-bot", "emojivoto",
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8081/stats').read().decode())",
        )  # fmt: skip
        return json.loads(text)  # type: ignore[no-any-return]

    first = bot_stats()
    time.sleep(3)
    second = bot_stats()
    assert second["sent"] > first["sent"]
    assert second["succeeded"] > first["succeeded"]
    assert second["by_choice"].get(":doughnut:", {}).get("5xx", 0) >= 0

    # A pod that exits is restarted with its restart count shown.
    victim = pods["emoji"]
    pid = next(
        int(p) for p in subprocess.run(
            ["ip", "netns", "pids", paths.pod_netns("emojivoto", victim["name"])],
            capture_output=True, text=True, check=True,
        ).stdout.split()
    )  # fmt: skip
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        p = next(p for p in status(lab_name)["pods"] if p["name"] == victim["name"])
        if p["restarts"] >= 1 and p["ready"]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"emoji pod was not restarted: {p}")

    nm("lab", "down", "--name", lab_name)
    assert lab_namespaces(lab_name) == []
    assert not paths.root.exists()
    assert (
        not [d for d in os.listdir("/etc/netns") if d.startswith(f"nm-{lab_name}-")]
        if Path("/etc/netns").exists()
        else True
    )
    print(f"lab up --demo to all pods ready: {ready_after:.1f} s")


def test_down_after_supervisor_sigkill_removes_everything(lab_name: str) -> None:
    nm("lab", "up", "--name", lab_name, "--nodes", "2", "--no-mesh")
    paths = LabPaths(lab_name)
    manifest = paths.root.parent / f"{lab_name}-app.yml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: sleeper, namespace: app}\n"
        "spec:\n  replicas: 3\n  selector: {matchLabels: {app: s}}\n  template:\n"
        "    metadata: {labels: {app: s}}\n    spec:\n      containers:\n"
        "      - {name: s, command: [sleep, '3600']}\n"
    )
    try:
        nm("lab", "apply", "--name", lab_name, "-f", str(manifest), "--wait", "--timeout", "60")
    finally:
        manifest.unlink()
    procs = lab_processes(paths)
    assert len(procs) >= 4  # the supervisor and three sleepers
    sup = next(
        e.data["pid"] for e in Ledger(paths.ledger).entries() if e.data.get("role") == "supervisor"
    )
    os.kill(sup, signal.SIGKILL)
    time.sleep(0.3)
    assert len(lab_namespaces(lab_name)) >= 6  # underlay, 2 nodes, 3 pods

    res = nm("lab", "down", "--name", lab_name)
    assert "removed" in res.stdout
    assert lab_namespaces(lab_name) == []
    assert not paths.root.exists()
    still = [pid for pid in procs if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]
    assert still == [], f"processes left: {still}"


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_bad_input_creates_nothing_and_names_the_field(lab_name: str, tmp_path: Path) -> None:
    nm("lab", "up", "--name", lab_name, "--nodes", "1", "--no-mesh")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n"
        "spec:\n  selector: {matchLabels: {app: web}}\n  template:\n"
        "    metadata: {labels: {app: web}}\n    spec:\n      containers:\n"
        "      - {name: web, command: [no-such-command-xyz]}\n"
    )
    res = nm("lab", "apply", "--name", lab_name, "-f", str(bad), check=False)
    assert res.returncode != 0
    assert f"{bad}: document 2 (Deployment shop/web): spec.template.spec.containers[0] (web)" \
           ".command: 'no-such-command-xyz' not found" in res.stderr  # fmt: skip
    assert "Traceback" not in res.stderr
    st = status(lab_name)
    assert (
        st["pods"] == [] and not (LabPaths(lab_name).objects / "Namespace" / "shop.yaml").exists()
    )

    bad.write_text("kind: Deployment\nmetadata: {name: x\n")
    res = nm("lab", "apply", "--name", lab_name, "-f", str(bad), check=False)
    assert res.returncode != 0 and "invalid YAML" in res.stderr and str(bad) in res.stderr

    # A lab that exists is not made twice.
    res = nm("lab", "up", "--name", lab_name, "--no-mesh", check=False)
    assert res.returncode != 0 and "already exists" in res.stderr


def test_non_root_is_told_plainly() -> None:
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", NODEMESH, "lab", "status"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode != 0
    assert "must run as root" in res.stderr and "Traceback" not in res.stderr
