"""emojivoto meshed in the lab: install-cni appended nodemesh-cni to each node's conflist, every
emojivoto pod was enrolled through the real CNI chain, its netns holds the golden rule set, the
agents proxy its traffic (their counters rise while vote-bot's ground truth moves), and a pod of
an unmeshed namespace has no nodemesh rule at all."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nodeagent.rules import RedirectSettings, build_plan, render_restore
from nodeagent.rules.saved import normalise_save
from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import DEMO, lab_up, nm

pytestmark = [pytest.mark.root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "rules" / "default.json"


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    with lab_up("m", *DEMO) as paths:
        yield paths


def agent_counter(paths: LabPaths, node: str, name: str) -> float:
    text = subprocess.run(
        ["ip", "netns", "exec", paths.node_netns(node), "python3", "-c",
         "import urllib.request as u; print(u.urlopen('http://127.0.0.1:4191/metrics').read().decode())"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(
        float(m.group(1))
        for m in re.finditer(rf'^{name}{{[^}}]*namespace="emojivoto"[^}}]*}} (\S+)$', text, re.M)
    )


def bot_stats(paths: LabPaths) -> dict[str, int]:
    out = nm("lab", "exec", "--name", paths.name, "-n", "emojivoto", "deploy/vote-bot", "--",
             "python3", "-c",
             "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8081/stats').read().decode())")  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def test_emojivoto_meshed_through_the_agents(lab: LabPaths, tmp_path: Path) -> None:
    for node in ("node1", "node2"):
        conflist = json.loads((lab.cni_conf_dir(node) / "10-lab-bridge.conflist").read_text())
        assert [p["type"] for p in conflist["plugins"]] == ["bridge", "nodemesh-cni"]

    st = json.loads(nm("lab", "status", "--name", lab.name, "-o", "json"))
    emojivoto = [p for p in st["pods"] if p["namespace"] == "emojivoto"]
    assert len(emojivoto) == 4
    # The golden default, plus where this node's probes come from: the pod's gateway (the
    # node's bridge, first address of its pod CIDR) and the node's IP.
    default = RedirectSettings.from_dict(json.loads(GOLDEN.read_text()))
    nodes = {n["name"]: n for n in st["nodes"]}
    for p in emojivoto:
        node = nodes[p["node"]]
        gateway = str(next(ipaddress.ip_network(node["podCIDR"]).hosts()))
        expected = render_restore(
            build_plan(dataclasses.replace(default, probe_sources=(gateway, node["ip"])))
        )
        saved = subprocess.run(
            ["ip", "netns", "exec", lab.pod_netns("emojivoto", p["name"]),
             "iptables-legacy-save", "-t", "nat"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert normalise_save(saved) == expected, p["name"]

    # Requests, not connections: emojivoto keeps its connections open, and the kubelet's
    # probes (new connections every period) no longer pass through the agents.
    before = {n: agent_counter(lab, n, "request_total") for n in ("node1", "node2")}
    sent_before = bot_stats(lab)["sent"]
    time.sleep(4)
    after = {n: agent_counter(lab, n, "request_total") for n in ("node1", "node2")}
    stats = bot_stats(lab)
    assert stats["sent"] > sent_before + 5
    assert stats["succeeded"] > 0
    assert sum(after.values()) > sum(before.values()), (before, after)

    # The server sees the client pod's own IP, through both agents and the mTLS tunnel.
    whoami = tmp_path / "whoami.yml"
    server = (
        "import http.server as h\n"
        "class H(h.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = self.client_address[0].encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
        "        self.end_headers(); self.wfile.write(body)\n"
        "h.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
    )
    bot = next(p for p in emojivoto if p["name"].startswith("vote-bot-"))
    other_node = "node1" if bot["node"] == "node2" else "node2"
    whoami.write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "whoami", "namespace": "emojivoto"},
         "spec": {"selector": {"matchLabels": {"app": "whoami"}},
                  "template": {"metadata": {"labels": {"app": "whoami"}},
                               "spec": {"nodeName": other_node, "containers": [
                                   {"name": "whoami", "command": ["python3", "-c", server],
                                    "readinessProbe": {"tcpSocket": {"port": 8000},
                                                       "periodSeconds": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "whoami", "namespace": "emojivoto"},
         "spec": {"selector": {"app": "whoami"}, "ports": [{"port": 80, "targetPort": 8000}]}},
    ]))  # fmt: skip
    nm("lab", "apply", "--name", lab.name, "-f", str(whoami), "--wait", "--timeout", "60")
    # Known issue: the first connections to a just-created Service can be reset (the client's
    # agent may not know it yet); retries are allowed here, the source address is the point.
    seen = nm("lab", "exec", "--name", lab.name, "-n", "emojivoto", "deploy/vote-bot", "--",
              "python3", "-c",
              "import urllib.request as u, time\n"
              "for i in range(20):\n"
              "    try: print(u.urlopen('http://whoami', timeout=5).read().decode()); break\n"
              "    except OSError as e: print('retry', e); time.sleep(0.5)\n")  # fmt: skip
    print(seen)
    seen = seen.splitlines()[-1]
    assert seen.strip() == bot["ip"], (seen, bot)

    # A namespace that is not labelled gets no rules in its pods.
    plain = tmp_path / "plain.yml"
    plain.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: p, namespace: plain}\n"
        "spec:\n  selector: {matchLabels: {app: p}}\n  template:\n"
        "    metadata: {labels: {app: p}}\n    spec:\n      containers:\n"
        "      - {name: p, command: [sleep, '3600']}\n"
    )
    nm("lab", "apply", "--name", lab.name, "-f", str(plain), "--wait", "--timeout", "60")
    pod = next(
        p
        for p in json.loads(nm("lab", "status", "--name", lab.name, "-o", "json"))["pods"]
        if p["namespace"] == "plain"
    )
    saved = subprocess.run(
        ["ip", "netns", "exec", lab.pod_netns("plain", pod["name"]), "iptables-legacy-save"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "NODEMESH" not in saved
