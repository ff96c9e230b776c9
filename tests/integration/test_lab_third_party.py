"""Third-party servers and clients through the mesh, counted by the mesh and by themselves.

In a two-node lab, a meshed namespace runs nginx (HTTP/1.1 on 8080, h2c on 8081), redis-server
and dropbear (an SSH server: it speaks first) on node2, and an idle client pod on node1 from
which hey, h2load, redis-benchmark and redis-cli run (`lab exec`, inside the client's netns, so
their traffic is captured). What `nodemesh stat` says must equal what the clients counted
themselves: a silent connection opened before the load (and hey's own spare connections) must
not blind the mesh to nginx, the SSH banner passes at once, and TCP_CONN of redis equals the
clients redis itself sees connected, whatever the window.
"""

from __future__ import annotations

import contextlib
import json
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

# Full-speed load generators: the two such modules share one worker, one after the other.
pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.xdist_group("full-speed-load")]

NS = "thirdparty"
HEY_REQUESTS = 2000
H2LOAD_REQUESTS = 2000


def nginx_conf(tmp: Path) -> str:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / "nginx" / d).mkdir(parents=True, exist_ok=True)
    t = tmp / "nginx"
    return f"""
daemon off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 100000;
    server {{ listen 8080; location / {{ return 200 "ok\\n"; }} }}
    server {{ listen 8081 http2; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def deployment(
    name: str, node: str, command: list[str], probe: list[str] | None, work: Path | None = None
) -> Any:
    container: dict[str, Any] = {"name": name, "image": f"debian/{name}", "command": command}
    volumes: list[dict[str, Any]] = []
    if work is not None:  # lab containers see only what they declare (their /tmp is their own)
        container["volumeMounts"] = [{"name": "work", "mountPath": str(work)}]
        volumes = [{"name": "work", "hostPath": {"path": str(work), "type": "Directory"}}]
    if probe:
        # Generous: a python3 start on a loaded 2-core machine can take over a second, and a
        # pod gone unready leaves its Service (connections to it are then refused).
        container["readinessProbe"] = {
            "exec": {"command": probe},
            "periodSeconds": 2,
            "timeoutSeconds": 20,
            "failureThreshold": 30,
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
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


def service(name: str, ports: list[int]) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": f"p{p}", "port": p, "targetPort": p} for p in ports],
        },
    }


def manifest(tmp: Path) -> str:
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp))
    key = tmp / "dropbear_ed25519"
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(key)], capture_output=True,
                   check=True, timeout=30)  # fmt: skip

    # Readiness from inside the pod over loopback, which the mesh does not capture: probes
    # add no connections or requests to what is counted.
    def probe(port: int) -> list[str]:
        return [
            "python3",
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)",
        ]

    docs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NS, "labels": {"nodemesh.io/mesh": "enabled"}}},
        deployment("client", "node1", ["sleep", "100000"], None),
        deployment("nginx", "node2", ["nginx", "-c", str(conf)], probe(8081), tmp),
        deployment("redis", "node2", ["redis-server", "--port", "6379", "--bind", "0.0.0.0",
                                      "--protected-mode", "no", "--save", "", "--appendonly", "no",
                                      "--dir", str(tmp)], probe(6379), tmp),
        deployment("ssh", "node2", ["dropbear", "-F", "-E", "-s", "-p", "2222", "-r", str(key),
                                    "-P", str(tmp / "dropbear.pid")], probe(2222), tmp),
        service("nginx", [8080, 8081]),
        service("redis", [6379]),
        service("ssh", [2222]),
    ]  # fmt: skip
    return yaml.safe_dump_all(docs)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabPaths]:
    name = "tpx" + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0", "--dashboard-port", "0")
        path = tmp_path / "thirdparty.yml"
        path.write_text(manifest(tmp_path))
        nm("lab", "apply", "--name", name, "-f", str(path), "--wait", "--timeout", "180")
        yield LabPaths(name)
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def in_client(lab: LabPaths, *command: str, timeout: float = 180) -> str:
    return nm("lab", "exec", "--name", lab.name, "-n", NS, "deploy/client", "--", *command,
              timeout=timeout)  # fmt: skip


@contextlib.contextmanager
def spawned_in_client(lab: LabPaths, *command: str) -> Iterator[str]:
    """Run `command` in the client pod until the block ends; yields its first line of output."""
    with subprocess.Popen(
        [NODEMESH, "lab", "exec", "--name", lab.name, "-n", NS, "deploy/client", "--", *command],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            yield proc.stdout.readline().strip()
        finally:
            proc.kill()
            proc.wait()


def stat(lab: LabPaths, target: str, *extra: str) -> dict[str, Any]:
    body = json.loads(nm("stat", target, "-n", NS, "--lab", lab.name, "-o", "json", *extra))
    (row,) = body["rows"]
    return row  # type: ignore[no-any-return]


def settles_at(read: Callable[[], Any], want: Any, *, within: float = 30) -> float:
    """Seconds until read() == want; fails with the last value once `within` has passed."""
    start = time.monotonic()
    while (got := read()) != want:
        assert time.monotonic() - start < within, f"still {got!r}, want {want!r}"
        time.sleep(0.5)
    return time.monotonic() - start


def hey_count(out: str) -> int:
    assert "Error distribution" not in out, out
    (n,) = re.findall(r"\[200\]\s+(\d+) responses", out)
    return int(n)


def h2load_count(out: str) -> int:
    m = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out
    )
    assert m and m[4] == "0", out
    return int(m[3])


def agent_metric(lab: LabPaths, node: str, name: str, *where: str) -> float:
    """The sum of an agent's series of `name` (those whose labels hold each of `where`)."""
    text = subprocess.run(
        ["ip", "netns", "exec", lab.node_netns(node), "python3", "-c",
         "import urllib.request as u; print(u.urlopen('http://127.0.0.1:4191/metrics').read().decode())"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    found = re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M)
    return sum(float(v) for labels, v in found if all(w in labels for w in where))


SILENT = (
    "import socket, sys, time; s = socket.create_connection(('nginx', 8080), 10); "
    "print('connected', flush=True); time.sleep(float(sys.argv[1]))"
)
HOLD_REDIS = (
    "import socket, sys, time; s = socket.create_connection(('redis', 6379), 10); "
    "s.sendall(b'PING\\r\\n'); assert s.recv(64) == b'+PONG\\r\\n'; "
    "print('held', flush=True); time.sleep(float(sys.argv[1]))"
)
BANNER = (
    "import socket; s = socket.create_connection(('ssh', 2222), 10); s.settimeout(10); "
    "print(s.recv(64).split(b'\\r\\n')[0].decode())"
)


def test_stat_equals_what_third_party_clients_counted(lab: LabPaths) -> None:
    # Every pod is enrolled by its node's live agent: MESHED 1/1 (from the agents' reports).
    def meshed() -> dict[str, tuple[int, int]]:
        body = json.loads(nm("stat", "deploy", "-n", NS, "--lab", lab.name, "-o", "json"))
        return {r["name"]: (r["meshed_pods"], r["total_pods"]) for r in body["rows"]}

    settles_at(meshed, {name: (1, 1) for name in ("client", "nginx", "redis", "ssh")})

    # A silent connection first: it says nothing for longer than the detection timeout.
    with spawned_in_client(lab, "python3", "-c", SILENT, "20") as said:
        assert said == "connected"
        time.sleep(2)
        hey = hey_count(in_client(lab, "hey", "-n", str(HEY_REQUESTS), "-c", "20",
                                  "http://nginx:8080/"))  # fmt: skip
    assert hey == HEY_REQUESTS

    def requests(*extra: str) -> Callable[[], int]:
        return lambda: int(stat(lab, "deploy/nginx", "-t", "5m", *extra)["requests"])

    # Both ends count every request: nginx's inbound, the client's outbound.
    fresh = settles_at(requests(), hey)
    settles_at(requests("--from", "deploy/client"), hey)
    print(f"hey: {hey} requests; stat equal {fresh:.1f} s after hey ended")
    # Observed once: the client's agent (node1) parsed them and reported nginx's inbound side
    # too, labelled as nginx's own agent would; nginx's agent (node2) parsed none of them.
    inbound = 'direction="inbound"'
    nginx = ('deployment="nginx"', 'client_id="spiffe://')
    assert agent_metric(lab, "node1", "request_total", inbound, *nginx) == hey
    assert agent_metric(lab, "node1", "request_total", 'direction="outbound"') == hey
    assert agent_metric(lab, "node2", "request_total", inbound) == 0

    h2 = h2load_count(in_client(lab, "h2load", "-n", str(H2LOAD_REQUESTS), "-c", "4", "-m", "10",
                                "http://nginx:8081/"))  # fmt: skip
    assert h2 == H2LOAD_REQUESTS
    fresh = settles_at(requests(), hey + h2)
    settles_at(requests("--from", "deploy/client"), hey + h2)
    print(f"h2load: {h2} requests; stat equal {fresh:.1f} s after h2load ended")

    # A server that speaks first: its banner comes through at once, the destination is
    # remembered (visibly, in the agent's metrics), and nginx stays observed.
    assert in_client(lab, "python3", "-c", BANNER, timeout=60).startswith("SSH-2.0-dropbear")
    assert agent_metric(lab, "node1", "nodemesh_agent_server_first_remembered_total") >= 1
    ssh_vip = in_client(lab, "python3", "-c", "import socket; print(socket.gethostbyname('ssh'))")
    check = subprocess.run([NODEMESH, "check", "--lab", lab.name], capture_output=True,
                           text=True, timeout=120).stdout  # fmt: skip
    assert re.search(
        rf"node1: protocol detection: relayed opaque.*{re.escape(ssh_vip.strip())}:2222", check
    ), check
    assert "node2: protocol detection: relayed opaque" in check, check  # dropbear's own pod IP
    again = hey_count(in_client(lab, "hey", "-n", "300", "-c", "5", "http://nginx:8080/"))
    settles_at(requests(), hey + h2 + again)

    # tap, from the server's side and from the client's: real ports, both workloads.
    tapped = 0
    for target, direction in (("deploy/nginx", "INBOUND"), ("deploy/client", "OUTBOUND")):
        with subprocess.Popen(
            [NODEMESH, "tap", target, "-n", NS, "--lab", lab.name, "-o", "json",
             "--duration", "8"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as tapping:  # fmt: skip
            time.sleep(3)  # the tap reaches the agents
            tapped += hey_count(
                in_client(lab, "hey", "-n", "20", "-c", "1", "-q", "10", "http://nginx:8080/")
            )
            out, err = tapping.communicate(timeout=60)
        reqs = [e for e in map(json.loads, out.splitlines()) if "req" in e]
        assert reqs, f"no tap events for {target}: {err}"
        for e in reqs:
            assert e["direction"] == direction, e
            assert e["src"]["port"] > 0 and e["dst"]["port"] == 8080, e
            assert (e["src"]["workload"], e["dst"]["workload"]) == ("client", "nginx"), e
    settles_at(requests(), hey + h2 + again + tapped)
    settles_at(requests("--from", "deploy/client"), hey + h2 + again + tapped)

    # redis: one held connection, then redis-benchmark's come and go.
    with spawned_in_client(lab, "python3", "-c", HOLD_REDIS, "120") as said:
        assert said == "held"
        in_client(lab, "redis-benchmark", "-h", "redis", "-p", "6379", "-n", "2000", "-c", "10",
                  "-t", "ping", "-q")  # fmt: skip
        info = in_client(lab, "redis-cli", "-h", "redis", "-p", "6379", "info", "clients")
        # redis's own count, less redis-cli's connection (closed since).
        connected = int(re.search(r"connected_clients:(\d+)", info)[1]) - 1  # type: ignore[index]
        assert connected == 1, info
        for window in ("10s", "1m", "15m"):
            settles_at(
                lambda w=window: stat(lab, "deploy/redis", "-t", w)["tcp_open_connections"],
                connected,
            )
    for window in ("10s", "1m", "15m"):
        settles_at(lambda w=window: stat(lab, "deploy/redis", "-t", w)["tcp_open_connections"], 0)
