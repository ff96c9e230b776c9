"""Pod churn and half-closed connections in the lab, seen from the agents (issue 12 items 4, 5).

Churn: a client on node1 keeps opening connections to Service `api` (nginx on node2) while its
Deployment scales 1 -> 10 -> 1, CYCLES times. node1's agent names every api pod it sent to in
its series; once those pods are gone (and the grace that lets Prometheus scrape their last
values has passed) its /metrics must hold no more lines than with the one pod, and its RSS must
come back to within a small bound. NODEMESH_CHURN_CYCLES sets the cycles (CI: 4; by hand, 20).

Half-close: socat in the client pod sends a request to a server that reads to EOF and never
answers, then half-closes. The mesh relays that (through both agents and their mTLS tunnel);
after the agents' half-closed timeout socat ends, and `ss` in both pods' namespaces shows no
socket of the connection left in FIN-WAIT-2 or CLOSE-WAIT.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import NODEMESH, nm

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.timeout(900)]

NS = "churn"
CYCLES = int(os.environ.get("NODEMESH_CHURN_CYCLES", "4"))
GRACE = 6  # --gone-pod-grace-seconds for this lab (the default is 120)
HALF_CLOSED = 5  # --half-closed-timeout-seconds for this lab (the default is 60)
# Sent to the api pods, a fresh connection each, so every new replica gets some.
CLIENT = (
    "import http.client, time\n"
    "while True:\n"
    "    try:\n"
    "        c = http.client.HTTPConnection('api', 8080, timeout=5)\n"
    "        c.request('GET', '/'); c.getresponse().read(); c.close()\n"
    "    except OSError:\n"
    "        pass\n"
    "    time.sleep(0.05)\n"
)
# Reads to the client's EOF, then holds every connection open without a word.
SILENT = (
    "import socket, threading, time\n"
    "s = socket.create_server(('0.0.0.0', 9000)); held = []\n"
    "def serve(c):\n"
    "    while c.recv(4096): pass\n"
    "    held.append(c)\n"
    "while True:\n"
    "    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()\n"
)


def nginx_conf() -> str:
    # Everything it writes goes to the container's own /tmp.
    return """
daemon off;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    server { listen 8080; location / { return 200 "ok\\n"; } }
}
"""


def deployment(
    name: str, node: str, command: list[str], replicas: int = 1, conf_dir: Path | None = None
) -> Any:
    container: dict[str, Any] = {"name": name, "image": f"debian/{name}", "command": command}
    volumes = []
    if conf_dir is not None:  # the container sees only what it declares
        container["volumeMounts"] = [{"name": "conf", "mountPath": str(conf_dir), "readOnly": True}]
        volumes = [{"name": "conf", "hostPath": {"path": str(conf_dir), "type": "Directory"}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def service(name: str, port: int) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"name": "p", "port": port}]},
    }


def manifest(tmp: Path, api_replicas: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf())
    docs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NS, "labels": {"nodemesh.io/mesh": "enabled"}}},
        deployment("client", "node1", ["python3", "-c", CLIENT]),
        deployment("shell", "node1", ["sleep", "100000"]),
        deployment("api", "node2", ["nginx", "-c", str(conf)], api_replicas, conf_dir=tmp),
        deployment("silent", "node2", ["python3", "-c", SILENT]),
        service("api", 8080),
        service("silent", 9000),
    ]  # fmt: skip
    path = tmp / f"churn-{api_replicas}.yml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabPaths, Path]]:
    name = "chn" + uuid.uuid4().hex[:6]
    tmp = tmp_path_factory.mktemp("churn")
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0",
           "--dashboard-port", "0", f"--agent-arg=--gone-pod-grace-seconds={GRACE}",
           f"--agent-arg=--half-closed-timeout-seconds={HALF_CLOSED}")  # fmt: skip
        nm("lab", "apply", "--name", name, "-f", str(manifest(tmp, 1)), "--wait",
           "--timeout", "180")  # fmt: skip
        yield LabPaths(name), tmp
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def agent_metrics(lab: LabPaths, node: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", lab.node_netns(node), "python3", "-c",
         "import urllib.request as u; print(u.urlopen('http://127.0.0.1:4191/metrics').read().decode(), end='')"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip


def rss_mb(text: str) -> float:
    (value,) = re.findall(r"^process_resident_memory_bytes (\S+)$", text, re.M)
    return float(value) / 1e6


def api_pods(lab: LabPaths) -> list[str]:
    st = json.loads(nm("lab", "status", "--name", lab.name, "-o", "json"))
    return [p["name"] for p in st["pods"] if p["namespace"] == NS and p["name"].startswith("api-")]


def scale(lab: LabPaths, tmp: Path, replicas: int) -> None:
    nm("lab", "apply", "--name", lab.name, "-f", str(manifest(tmp, replicas)), "--wait",
       "--timeout", "180")  # fmt: skip
    deadline = time.monotonic() + 120
    while len(api_pods(lab)) != replicas:
        assert time.monotonic() < deadline, f"api still has {api_pods(lab)}"
        time.sleep(0.5)


def dst_pods(text: str) -> set[str]:
    return set(re.findall(r'dst_pod="(api-[^"]+)"', text))


def settled(lab: LabPaths, live: list[str]) -> str:
    """node1's /metrics once it names no api pod but the live ones (grace + sweep + slack)."""
    deadline = time.monotonic() + GRACE + 60
    while True:
        text = agent_metrics(lab, "node1")
        named = dst_pods(text)
        if named <= set(live):
            return text
        assert time.monotonic() < deadline, f"node1 still names gone pods {named - set(live)}"
        time.sleep(1)


def test_churn_leaves_metrics_and_memory_where_they_were(lab: tuple[LabPaths, Path]) -> None:
    paths, tmp = lab

    def cycle() -> None:
        scale(paths, tmp, 10)
        deadline = time.monotonic() + 60
        # The client reached (nearly) every new replica before they go again.
        while len(dst_pods(agent_metrics(paths, "node1"))) < 8:
            assert time.monotonic() < deadline, dst_pods(agent_metrics(paths, "node1"))
            time.sleep(1)
        scale(paths, tmp, 1)

    try:
        check_churn(paths, cycle)
    finally:
        # No pod made in this test outlives it (the lab is shared with the next test).
        scale(paths, tmp, 0)


def check_churn(paths: LabPaths, cycle: Callable[[], None]) -> None:
    cycle()  # warm-up: the first scale-up allocates what every later one reuses
    base = settled(paths, api_pods(paths))
    base_lines, base_rss = len(base.splitlines()), rss_mb(base)
    before = time.monotonic()
    for _ in range(CYCLES):
        cycle()
    took = time.monotonic() - before
    live = api_pods(paths)
    text = settled(paths, live)
    lines, rss = len(text.splitlines()), rss_mb(text)
    print(f"{CYCLES} cycles in {took:.0f} s: /metrics {base_lines} -> {lines} lines, "
          f"RSS {base_rss:.1f} -> {rss:.1f} MB")  # fmt: skip
    # One api pod before and after; its series may have been replaced by another pod's (a
    # scale-down keeps any replica), never added to: at most one more pod's few series.
    assert lines <= base_lines + 40, (base_lines, lines)
    # Before the fix: ~2.2 MB a cycle, for ever. Allow heap noise, not growth.
    assert rss <= base_rss + 4, (base_rss, rss)


def sockets(lab: LabPaths, pod_deploy: str, port: int | None = None) -> list[str]:
    """TCP socket states in the pod's netns (its own and its agent's), listeners left out."""
    where = [f"( sport = :{port} or dport = :{port} )"] if port else []
    out = nm("lab", "exec", "--name", lab.name, "-n", NS, f"deploy/{pod_deploy}", "--",
             "ss", "-tanH", *where)  # fmt: skip
    return [line.split()[0] for line in out.splitlines() if line and "LISTEN" not in line]


def test_a_half_closed_request_nobody_answers_is_reaped(lab: tuple[LabPaths, Path]) -> None:
    paths, _ = lab
    with subprocess.Popen(
        [NODEMESH, "lab", "exec", "--name", paths.name, "-n", NS, "deploy/shell", "--",
         "sh", "-c", "echo hello | socat -t 120 - TCP:silent:9000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        try:
            # Stuck as in the field: socat in FIN-WAIT-2 towards its agent, which holds the
            # connection (and a tunnel) half-closed.
            started = time.monotonic()
            deadline = started + 30
            while "FIN-WAIT-2" not in (client := sockets(paths, "shell", 9000)):
                if proc.poll() is not None:
                    # On a loaded machine one look at the sockets can outlast the reaping: then
                    # socat must have ended well, and not before the agent's timeout.
                    took = time.monotonic() - started
                    assert proc.returncode == 0 and took >= HALF_CLOSED, (took, proc.communicate())
                    break
                assert time.monotonic() < deadline, client
                time.sleep(0.5)
            # socat ends long before its own 120 s: the agent closed the connection.
            out, err = proc.communicate(timeout=HALF_CLOSED + 60)
            assert proc.returncode == 0 and out == b"", (out, err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    deadline = time.monotonic() + 30
    while True:
        # Every socket in both pods' namespaces: the apps' and their agents' (the relays', the
        # tunnel's); nothing else runs in them.
        left = {pod: sockets(paths, pod) for pod in ("shell", "silent")}
        if not {"FIN-WAIT-2", "CLOSE-WAIT"} & {*left["shell"], *left["silent"]}:
            break
        assert time.monotonic() < deadline, left
        time.sleep(1)
