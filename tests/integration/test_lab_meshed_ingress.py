"""A meshed ingress controller: Debian's nginx set up as ingress-nginx sets up its pods, in front
of emojivoto's web, in a meshed namespace of a two-node lab.

The controller (node1) proxies `/vip/` to web's Service VIP and `/pod/` straight to web's pod IP
(as ingress-nginx and Traefik do by default: they read the endpoints and skip the VIP); web runs
on node2. A client outside the mesh on node1 calls the controller with a marker in the path. The
controller's main listener is skipped by the mesh (`nodemesh.io/skip-inbound-ports`), as
docs/adoption.md says to do for an ingress; a second one is not, and reaches it through its
agent (permissive). What a user must see:

- both ways to the backend are captured and mTLS'd: tcpdump on the lab's underlay sees the
  controller's node reach web's pod on the tunnel port 4143 and never sees the marker;
- `nodemesh edges` shows ingress-nginx -> web, secured, with both SPIFFE identities, and `stat`
  counts the requests the controller sent;
- the controller's access log holds the client's own pod IP (not the agent's or the node's),
  on both listeners.

Run with NODEMESH_LEAKCHECK_ONLY=adpti on a shared machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.lab.paths import LabPaths
from tests.integration.test_lab_failclosed import Tcpdump

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
ROOT = Path(__file__).resolve().parents[2]
INGRESS_NS = "ingress-nginx"
CLIENT_NS = "outside"
REQUESTS = 40
TD = "spiffe://cluster.local"


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def settles(read: Callable[[], Any], ok: Callable[[Any], bool], *, within: float = 60) -> Any:
    start = time.monotonic()
    while not ok(got := read()):
        assert time.monotonic() - start < within, f"still {got!r}"
        time.sleep(1)
    return got


def emojivoto_web_on_node2() -> list[dict[str, Any]]:
    """emojivoto without its vote-bot (the test is the only client), web pinned to node2."""
    docs = [
        d
        for d in yaml.safe_load_all((ROOT / "manifests/examples/emojivoto.yml").read_text())
        if d and d["metadata"]["name"] != "vote-bot"
    ]
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "web":
            d["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node2"}
    return docs


def nginx_ingress_conf(work: Path, web_pod_ip: str) -> str:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(parents=True, exist_ok=True)
    return f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format ingress '$remote_addr "$request" $status $upstream_addr';
    access_log {work}/access.log ingress;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream web-endpoints {{ server {web_pod_ip}:8080; keepalive 4; }}
    server {{
        listen 8080;
        listen 8081;
        location /vip/ {{ proxy_pass http://web-svc.emojivoto.svc.cluster.local:80/; }}
        location /pod/ {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://web-endpoints/;
        }}
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
}}
"""


def ingress_docs(work: Path) -> list[dict[str, Any]]:
    probe = ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8080), 2)"]
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": INGRESS_NS, "labels": {"nodemesh.io/mesh": "enabled"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CLIENT_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "ingress-nginx", "namespace": INGRESS_NS}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ingress-nginx-controller", "namespace": INGRESS_NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "ingress-nginx"}},
                "template": {
                    "metadata": {
                        "labels": {"app": "ingress-nginx"},
                        # The controller's own listener: clients from outside the mesh (load
                        # balancers, the internet) reach it unchanged, in strict mode too.
                        "annotations": {"nodemesh.io/skip-inbound-ports": "8080"},
                    },
                    "spec": {
                        "serviceAccountName": "ingress-nginx",
                        "nodeSelector": {"kubernetes.io/hostname": "node1"},
                        "containers": [{
                            "name": "controller",
                            "image": "registry.k8s.io/ingress-nginx/controller:v1.9.4",
                            "command": ["nginx", "-c", str(work / "nginx.conf")],
                            "ports": [{"name": "http", "containerPort": 8080},
                                      {"name": "alt", "containerPort": 8081}],
                            "volumeMounts": [{"name": "work", "mountPath": str(work)}],
                            "readinessProbe": {"exec": {"command": probe}, "periodSeconds": 2,
                                               "timeoutSeconds": 20, "failureThreshold": 30},
                        }],
                        "volumes": [{"name": "work",
                                     "hostPath": {"path": str(work), "type": "Directory"}}],
                    },
                },
            },
        },
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "ingress-nginx-controller", "namespace": INGRESS_NS},
         "spec": {"selector": {"app": "ingress-nginx"},
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080},
                            {"name": "alt", "port": 81, "targetPort": 8081}]}},
        # For test_a_namespace_meshed_under_load_refuses_no_call, which scales it up.
        late_server(0),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late", "namespace": CLIENT_NS},
         "spec": {"selector": {"app": "late"}, "ports": [{"port": 8000, "targetPort": 8000}]}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "client", "namespace": CLIENT_NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "client"}},
                "template": {
                    "metadata": {"labels": {"app": "client"}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": "node1"},
                        "containers": [{"name": "client", "image": "debian/curl",
                                        "command": ["sleep", "100000"]}],
                    },
                },
            },
        },
    ]  # fmt: skip


def pod_of(lab: LabPaths, namespace: str, app: str) -> dict[str, Any]:
    for path in (lab.objects / "Pod" / namespace).glob("*.yaml"):
        pod = yaml.safe_load(path.read_text())
        if pod["metadata"].get("labels", {}).get("app") == app:
            return pod  # type: ignore[no-any-return]
    raise AssertionError(f"no pod of app {app} in {namespace}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabPaths, Path]]:
    tmp = tmp_path_factory.mktemp("ingress")
    name = "adpti" + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0", "--dashboard-port", "0")
        paths = LabPaths(name)
        app = tmp / "emojivoto.yml"
        app.write_text(yaml.safe_dump_all(emojivoto_web_on_node2()))
        nm("lab", "apply", "--name", name, "-f", str(app), "--wait", "--timeout", "180")
        work = tmp / "nginx"
        work.mkdir()
        web_ip = pod_of(paths, "emojivoto", "web")["status"]["podIP"]
        (work / "nginx.conf").write_text(nginx_ingress_conf(work, web_ip))
        ingress = tmp / "ingress.yml"
        ingress.write_text(yaml.safe_dump_all(ingress_docs(work)))
        nm("lab", "apply", "--name", name, "-f", str(ingress), "--wait", "--timeout", "180")
        yield paths, work
    finally:
        for _ in range(2):  # a second pass for pods the supervisor was still starting
            subprocess.run(
                [NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300
            )


def test_meshed_ingress_reaches_backends_over_mtls_and_keeps_the_client_ip(
    lab: tuple[LabPaths, Path],
) -> None:
    paths, work = lab
    web_ip = pod_of(paths, "emojivoto", "web")["status"]["podIP"]
    client_ip = pod_of(paths, CLIENT_NS, "client")["status"]["podIP"]
    ingress_ip = pod_of(paths, INGRESS_NS, "ingress-nginx")["status"]["podIP"]
    # The controller is meshed (its node's agent enrolled it), the client is not.
    body = json.loads(nm("stat", "deploy", "-n", INGRESS_NS, "--lab", paths.name, "-o", "json"))
    assert [(r["name"], r["meshed_pods"]) for r in body["rows"]] == [
        ("ingress-nginx-controller", 1)
    ], body

    marker = "nmmarker" + uuid.uuid4().hex[:8]
    capture = Tcpdump(paths.underlay_netns, work / "underlay.pcap")
    try:
        # One shell in the client pod for every request (a `lab exec` each is slow on a busy
        # machine). Port 80 reaches the skipped listener; 81 the one the agent relays.
        urls = [
            f"http://ingress-nginx-controller.{INGRESS_NS}:{port}/{how}/api/list?{marker}={i}"
            for i in range(REQUESTS // 4)
            for port in (80, 81)
            for how in ("vip", "pod")
        ]
        script = ('for u in "$@"; do curl -sS -o /dev/null -w "%{http_code}\\n" '
                  '--max-time 10 "$u"; done')  # fmt: skip
        codes = nm("lab", "exec", "--name", paths.name, "-n", CLIENT_NS, "deploy/client", "--",
                   "sh", "-c", script, "sh", *urls, timeout=300).split()  # fmt: skip
        assert codes == ["200"] * REQUESTS, list(zip(urls, codes, strict=False))
    finally:
        capture.stop()
    assert capture.dropped == 0
    # Plaintext would carry the marker across the underlay (client and controller share node1,
    # web is on node2): it never does, and the controller's node reaches web's pod on 4143.
    assert capture.count(marker) == 0
    assert capture.packets(f"src host {ingress_ip} and dst host {web_ip} and dst port 4143") > 0
    assert capture.packets(f"src host {ingress_ip} and dst port 8080") == 0
    assert capture.packets(f"host {client_ip}") == 0  # the client stayed on node1

    # The controller saw the client's own address for every request.
    log = (work / "access.log").read_text()
    seen = re.findall(rf"^(\S+) \"GET /(?:vip|pod)/api/list\?{marker}=\d+ ", log, re.M)
    assert len(seen) == REQUESTS, log[-2000:]
    assert set(seen) == {client_ip}, set(seen)

    def edges() -> dict[tuple[str, str], dict[str, Any]]:
        out = json.loads(nm("edges", "deploy", "-A", "--lab", paths.name, "-t", "10m",
                            "-o", "json"))  # fmt: skip
        return {(e["src"]["name"], e["dst"]["name"]): e for e in out["edges"]}

    found = settles(edges, lambda got: ("ingress-nginx-controller", "web") in got)
    edge = found[("ingress-nginx-controller", "web")]
    assert edge["secured"], edge
    assert (edge["src"]["namespace"], edge["dst"]["namespace"]) == (INGRESS_NS, "emojivoto")
    assert edge["client_id"] == f"{TD}/ns/{INGRESS_NS}/sa/ingress-nginx", edge
    assert edge["server_id"] == f"{TD}/ns/emojivoto/sa/web", edge

    # The requests the controller sent, as its agent counted them (TLS both ways).
    found = settles(edges, lambda got: got[("ingress-nginx-controller", "web")]["requests"]
                    >= REQUESTS)  # fmt: skip


DRAIN = """
import http.client, signal, sys, time
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
open(sys.argv[1] + ".started", "w").close()
while not stopping:
    time.sleep(0.05)
seen = []
end = time.monotonic() + 2
while time.monotonic() < end:
    try:
        c = http.client.HTTPConnection("web-svc.emojivoto", 80, timeout=3)
        c.request("GET", "/ready")
        seen.append(str(c.getresponse().status))
        c.close()
    except Exception as e:
        seen.append(type(e).__name__)
    time.sleep(0.1)
with open(sys.argv[1], "w") as f:
    f.write(" ".join(seen))
"""


def test_a_meshed_pod_keeps_its_identity_through_its_grace_period(
    lab: tuple[LabPaths, Path], tmp_path: Path
) -> None:
    """A pod being deleted still runs (SIGTERM, then its grace period: a controller drains,
    an app finishes its work) and its calls to meshed Services must keep working: the mesh
    must not forget who it is before it is gone."""
    paths, _ = lab
    work = tmp_path / "drain"
    work.mkdir()
    out = work / "seen"
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "drainer", "namespace": INGRESS_NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "drainer"}},
            "template": {
                "metadata": {"labels": {"app": "drainer"}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "drainer", "image": "python",
                        "command": ["python3", "-c", DRAIN, str(out)],
                        "volumeMounts": [{"name": "work", "mountPath": str(work)}],
                    }],
                    "volumes": [{"name": "work",
                                 "hostPath": {"path": str(work), "type": "Directory"}}],
                },
            },
        },
    }  # fmt: skip
    manifest = work / "drainer.yml"
    manifest.write_text(yaml.safe_dump(dep))
    nm("lab", "apply", "--name", paths.name, "-f", str(manifest), "--wait", "--timeout", "120")
    settles(lambda: (work / "seen.started").exists(), bool)
    netns = paths.pod_netns(INGRESS_NS, pod_of(paths, INGRESS_NS, "drainer")["metadata"]["name"])
    nm("lab", "delete", "--name", paths.name, "-f", str(manifest))

    def gone() -> bool:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return out.exists() and netns not in listed

    settles(gone, bool)
    seen = out.read_text().split()
    assert len(seen) >= 5, seen
    assert set(seen) == {"200"}, seen


def late_server(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "late", "namespace": CLIENT_NS},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "late"}},
                 "template": {"metadata": {"labels": {"app": "late"}}, "spec": {
                     "nodeSelector": {"kubernetes.io/hostname": "node2"},
                     "containers": [{"name": "late", "image": "python",
                                     "command": ["python3", "-m", "http.server", "8000"],
                                     "readinessProbe": {"tcpSocket": {"port": 8000},
                                                        "periodSeconds": 1}}]}}},
    }  # fmt: skip


CALLER = """
import http.client, sys, time
seen = []
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        c = http.client.HTTPConnection("late.outside", 8000, timeout=10)
        c.request("GET", "/")
        seen.append(str(c.getresponse().status))
        c.close()
    except Exception as e:
        seen.append(type(e).__name__)
    time.sleep(0.02)
with open(sys.argv[1], "w") as f:
    f.write(" ".join(seen))
time.sleep(100000)
"""


def test_a_namespace_meshed_under_load_refuses_no_call(
    lab: tuple[LabPaths, Path], tmp_path: Path
) -> None:
    """`nodemesh mesh enable` on a namespace whose pods run: their agent meshes them in place
    while the control plane already tells every client they are meshed. A meshed client calling
    them all along (new connection each time) must see no failure in the switch."""
    paths, _ = lab
    work = tmp_path / "late"
    work.mkdir()
    out = work / "seen"
    # The fixture made the namespace (unmeshed), the Service and the Deployment (0 replicas):
    # made and deleted here, they would leave the lab's empty object folders behind, which the
    # leak check counts.
    docs = [late_server(1)]
    caller = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "caller", "namespace": INGRESS_NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "caller"}},
                 "template": {"metadata": {"labels": {"app": "caller"}}, "spec": {
                     "nodeSelector": {"kubernetes.io/hostname": "node1"},
                     "containers": [{
                         "name": "caller", "image": "python",
                         "command": ["python3", "-c", CALLER, str(out), "12"],
                         "volumeMounts": [{"name": "work", "mountPath": str(work)}]}],
                     "volumes": [{"name": "work",
                                  "hostPath": {"path": str(work), "type": "Directory"}}]}}},
    }  # fmt: skip
    server = work / "late.yml"
    server.write_text(yaml.safe_dump_all(docs))
    client = work / "caller.yml"
    client.write_text(yaml.safe_dump(caller))
    netns = []
    try:
        nm("lab", "apply", "--name", paths.name, "-f", str(server), "--wait", "--timeout", "120")
        nm("lab", "apply", "--name", paths.name, "-f", str(client), "--wait", "--timeout", "120")
        netns = [paths.pod_netns(ns, pod_of(paths, ns, app)["metadata"]["name"])
                 for ns, app in ((CLIENT_NS, "late"), (INGRESS_NS, "caller"))]  # fmt: skip
        time.sleep(4)
        nm("mesh", "enable", CLIENT_NS, "--lab", paths.name)
        settles(out.exists, bool, within=60)
        seen = out.read_text().split()
        # The switch happened under the load: late's agent meshed the running pod.
        stat = json.loads(nm("stat", "deploy/late", "-n", CLIENT_NS, "--lab", paths.name,
                             "-o", "json"))["rows"]  # fmt: skip
    finally:
        nm("mesh", "disable", CLIENT_NS, "--lab", paths.name)
        nm("lab", "delete", "--name", paths.name, "-f", str(client))
        server.write_text(yaml.safe_dump(late_server(0)))
        nm("lab", "apply", "--name", paths.name, "-f", str(server))

        def gone() -> bool:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            return not any(n in listed.stdout for n in netns)

        settles(gone, bool)
    assert len(seen) > 50, seen
    failed = [s for s in seen if s != "200"]
    assert failed == [], f"{len(failed)} of {len(seen)} failed: {failed[:5]}"
    assert [r["meshed_pods"] for r in stat] == [1], stat
