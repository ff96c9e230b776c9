"""nodemesh as the edge: nodemesh-ingress, as `nodemesh install --ingress` renders it (`lab up
--ingress`), serving an Ingress of class nodemesh in a two-node lab.

Two backends (web, api: Python HTTP servers answering with their name, the path and the
X-Forwarded-* headers they got) run on the node the ingress is not on; an Ingress gives two
hosts two paths each, one host TLS from a Secret made here. A client outside the mesh, on the
ingress' node, calls the ingress' Service with curl, a marker in every path. What a user must
see:

- each host and path reaches its backend; an unknown host is 404, a Service without endpoints
  503; keep-alive holds (several requests on one curl connection);
- HTTPS with SNI: curl --cacert verifies the Secret's certificate; the app sees
  X-Forwarded-Proto https and the client's own pod IP in X-Forwarded-For;
- `nodemesh edges` shows nodemesh-ingress -> web and -> api, secured, with the ingress'
  identity, and `stat` counts the backends' requests;
- tcpdump on the underlay sees the ingress' node reach the backends on the tunnel port only and
  never the marker;
- a Gateway of class nodemesh with an HTTPRoute attached is served the same way;
- an Ingress whose TLS Secret is missing is logged by name and its host stays served on HTTP.

Run with NODEMESH_LEAKCHECK_ONLY=edgi on a shared machine.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import lab_up, nm, run
from tests.integration.test_lab_failclosed import Tcpdump
from tests.integration.test_lab_meshed_ingress import pod_of, settles
from tests.unit.edge.certgen import CA

pytestmark = [pytest.mark.root, pytest.mark.lab]

TD = "spiffe://cluster.local"
INGRESS_NS = "nodemesh-ingress"
VIP = f"nodemesh-ingress.{INGRESS_NS}.svc.cluster.local"
BACKEND = """
import http.server, json, sys
NAME = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        h = self.headers
        body = json.dumps({"backend": NAME, "path": self.path, "xff": h.get("x-forwarded-for"),
                           "proto": h.get("x-forwarded-proto")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""


def backend(name: str, node: str, work: Path, replicas: int = 1) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "shop"},
         "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                  "template": {"metadata": {"labels": {"app": name}}, "spec": {
                      "nodeSelector": {"kubernetes.io/hostname": node},
                      "containers": [{"name": name, "image": "python",
                                      "command": ["python3", str(work / "backend.py"), name],
                                      "volumeMounts": [{"name": "work", "mountPath": str(work)}],
                                      "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}}],
                      "volumes": [{"name": "work", "hostPath": {"path": str(work), "type": "Directory"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8000}]}},
    ]  # fmt: skip


def path(p: str, svc: str, kind: str = "Prefix", port: Any = "http") -> dict[str, Any]:
    ref = {"name": port} if isinstance(port, str) else {"number": port}
    return {"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": ref}}}


def app_docs(work: Path, node: str, ca: CA) -> list[dict[str, Any]]:
    crt, key = ca.issue("shop.example")
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "ingressClassName": "nodemesh",
            "tls": [{"hosts": ["shop.example"], "secretName": "shop-tls"}],
            "rules": [
                {
                    "host": "shop.example",
                    "http": {"paths": [path("/", "web"), path("/api", "api")]},
                },
                {
                    "host": "api.example",
                    "http": {
                        "paths": [path("/v1/status", "api", "Exact", 80), path("/empty", "empty")]
                    },
                },
            ],
        },
    }
    nosecret = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "nosecret", "namespace": "shop"},
        "spec": {
            "ingressClassName": "nodemesh",
            "tls": [{"hosts": ["plain.example"], "secretName": "not-made"}],
            "rules": [{"host": "plain.example", "http": {"paths": [path("/", "web")]}}],
        },
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": "shop", "labels": {"nodemesh.io/mesh": "enabled"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "outside"}},
        *backend("web", node, work), *backend("api", node, work),
        *backend("empty", node, work, replicas=0),  # a Service without endpoints
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "shop-tls", "namespace": "shop"},
         "data": {"tls.crt": base64.b64encode(crt).decode(),
                  "tls.key": base64.b64encode(key).decode()}},
        ingress, nosecret,
        # Gateway API at the edge: a Gateway of class nodemesh and an HTTPRoute attached to it.
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "edge", "namespace": "shop"},
         "spec": {"gatewayClassName": "nodemesh",
                  "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "gw", "namespace": "shop"},
         "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["gw.example"],
                  "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                             "backendRefs": [{"name": "api", "port": 80}]},
                            {"backendRefs": [{"name": "web", "port": 80}]}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "client", "namespace": "outside"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "client"}},
                  "template": {"metadata": {"labels": {"app": "client"}}, "spec": {
                      "nodeSelector": {"kubernetes.io/hostname": "NODE"},
                      "containers": [{"name": "client", "image": "debian/curl",
                                      "command": ["sleep", "100000"],
                                      "volumeMounts": [{"name": "work", "mountPath": str(work)}]}],
                      "volumes": [{"name": "work", "hostPath": {"path": str(work), "type": "Directory"}}]}}}},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabPaths, Path]]:
    work = tmp_path_factory.mktemp("edge")
    work.chmod(0o755)
    (work / "backend.py").write_text(BACKEND)
    ca = CA()
    (work / "ca.pem").write_bytes(ca.pem)
    with lab_up(
        "edgi", "--ingress", "--ingress-http-port", "0", "--ingress-https-port", "0"
    ) as paths:
        ingress_node = ingress_pod(paths)["spec"]["nodeName"]
        other = "node2" if ingress_node == "node1" else "node1"
        docs = app_docs(work, other, ca)
        docs[-1]["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] = (
            ingress_node
        )
        manifest = work / "app.yml"
        manifest.write_text(yaml.safe_dump_all(docs))
        nm("lab", "apply", "--name", paths.name, "-f", str(manifest), "--wait", "--timeout", "180")
        yield paths, work


def ingress_pod(paths: LabPaths) -> dict[str, Any]:
    pods = [
        yaml.safe_load(p.read_text()) for p in (paths.objects / "Pod" / INGRESS_NS).glob("*.yaml")
    ]
    assert len(pods) == 1, pods
    return pods[0]  # type: ignore[no-any-return]


def curl(paths: LabPaths, *requests: list[str]) -> list[tuple[str, str]]:
    """Each request's (status, body) from one shell in the client pod; a request is curl's
    arguments; bodies are one line each."""
    script = (
        'for r in "$@"; do out=$(eval "curl -sS --max-time 10 -w \' %{http_code}\' $r"); '
        'printf "%s\\n" "$(printf "%s" "$out" | tr "\\n" " ")"; done'
    )
    out = nm("lab", "exec", "--name", paths.name, "-n", "outside", "deploy/client", "--",
             "sh", "-c", script, "sh", *[" ".join(f"'{a}'" for a in r) for r in requests],
             timeout=300)  # fmt: skip
    got = []
    for line in out.splitlines():
        body, _, code = line.rpartition(" ")
        got.append((code, body))
    return got


def test_hosts_paths_tls_and_the_mesh(lab: tuple[LabPaths, Path]) -> None:
    paths, work = lab
    client_ip = pod_of(paths, "outside", "client")["status"]["podIP"]
    ingress_ip = ingress_pod(paths)["status"]["podIP"]
    backend_ips = {a: pod_of(paths, "shop", a)["status"]["podIP"] for a in ("web", "api")}
    marker = "edgmarker" + uuid.uuid4().hex[:8]
    svc = yaml.safe_load(
        (paths.objects / "Service" / INGRESS_NS / "nodemesh-ingress.yaml").read_text()
    )
    https = ["--resolve", f"shop.example:443:{svc['spec']['clusterIP']}",
             "--cacert", str(work / "ca.pem")]  # fmt: skip
    capture = Tcpdump(paths.underlay_netns, work / "underlay.pcap")
    try:
        got = curl(
            paths,
            ["-H", "Host: shop.example", f"http://{VIP}/index?{marker}"],
            ["-H", "Host: shop.example", f"http://{VIP}/api/items?{marker}"],
            ["-H", "Host: shop.example", f"http://{VIP}/apiary?{marker}"],  # not under /api
            ["-H", "Host: api.example", f"http://{VIP}/v1/status?{marker}"],
            ["-H", "Host: api.example", f"http://{VIP}/v1/status/more?{marker}"],  # Exact only
            ["-H", "Host: api.example", f"http://{VIP}/empty?{marker}"],
            ["-H", "Host: unknown.example", f"http://{VIP}/?{marker}"],
            [*https, f"https://shop.example/api/tls?{marker}"],
            ["-H", "Host: plain.example", f"http://{VIP}/?{marker}"],
            ["-H", "Host: gw.example", f"http://{VIP}/api/gw?{marker}"],
            ["-H", "Host: gw.example", f"http://{VIP}/home?{marker}"],
        )
    finally:
        capture.stop()
    codes = [c for c, _ in got]
    assert codes == ["200", "200", "200", "200", "404", "503", "404", "200", "200", "200",
                     "200"], got  # fmt: skip
    bodies = [json.loads(b) if c == "200" else b for c, b in got]
    assert [(b["backend"], b["path"].split("?")[0]) for b in bodies if isinstance(b, dict)] == [
        ("web", "/index"), ("api", "/api/items"), ("web", "/apiary"), ("api", "/v1/status"),
        ("api", "/api/tls"), ("web", "/"), ("api", "/api/gw"), ("web", "/home")]  # fmt: skip
    assert "no Ingress rule matches" in got[4][1] and "no Ingress rule matches" in got[6][1]
    assert "Service shop/empty has no ready endpoints" in got[5][1]
    # The client's own address and the scheme it used reach the app.
    assert {b["xff"] for b in bodies if isinstance(b, dict)} == {client_ip}
    assert [b["proto"] for b in bodies if isinstance(b, dict)] == [
        "http", "http", "http", "http", "https", "http", "http", "http"]  # fmt: skip

    # The ingress' calls crossed the underlay as mTLS to the backends' tunnel port, never plain.
    assert capture.dropped == 0
    assert capture.count(marker) == 0
    for ip in backend_ips.values():
        assert capture.packets(f"src host {ingress_ip} and dst host {ip} and dst port 4143") > 0
        assert capture.packets(f"dst host {ip} and dst port 8000") == 0

    def edges() -> dict[tuple[str, str], dict[str, Any]]:
        out = json.loads(nm("edges", "deploy", "-A", "--lab", paths.name, "-t", "10m",
                            "-o", "json"))  # fmt: skip
        return {(e["src"]["name"], e["dst"]["name"]): e for e in out["edges"]}

    found = settles(edges, lambda g: {("nodemesh-ingress", "web"), ("nodemesh-ingress", "api")}
                    <= set(g))  # fmt: skip
    for dst in ("web", "api"):
        edge = found[("nodemesh-ingress", dst)]
        assert edge["secured"], edge
        assert edge["client_id"] == f"{TD}/ns/{INGRESS_NS}/sa/nodemesh-ingress", edge
        assert edge["server_id"] == f"{TD}/ns/shop/sa/default", edge
    # Each curl is a new client connection; the ingress kept its backend connections alive.
    settles(
        edges, lambda g: all(g[("nodemesh-ingress", d)]["requests"] >= 3 for d in ("web", "api"))
    )
    for dst in ("web", "api"):
        edge = edges()[("nodemesh-ingress", dst)]
        assert edge["tcp_connections"] < edge["requests"], edge

    def stat() -> dict[str, Any]:
        out = json.loads(nm("stat", "deploy", "-n", "shop", "--lab", paths.name, "-t", "10m",
                            "-o", "json"))  # fmt: skip
        return {r["name"]: r for r in out["rows"]}

    rows = settles(stat, lambda r: all((r.get(d) or {}).get("requests", 0) >= 3
                                       for d in ("web", "api")))  # fmt: skip
    assert rows["web"]["success_rate"] == 1.0 and rows["api"]["success_rate"] == 1.0, rows


def test_a_missing_tls_secret_is_logged_by_name(lab: tuple[LabPaths, Path]) -> None:
    paths, _ = lab
    logs = nm("lab", "logs", "--name", paths.name, "-n", INGRESS_NS, "deploy/nodemesh-ingress")
    assert ("Ingress shop/nosecret: spec.tls[0]: Secret shop/not-made not found; "
            "plain.example served over HTTP only") in logs, logs[-3000:]  # fmt: skip


def test_migrate_edge_copies_another_controllers_ingress_for_nodemesh(
    lab: tuple[LabPaths, Path],
) -> None:
    """`nodemesh migrate apply edge`: an Ingress of another class (here "nginx", with no nginx
    running) gets a copy of class nodemesh, which nodemesh-ingress then serves."""
    paths, work = lab
    legacy = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
              "metadata": {"name": "legacy", "namespace": "shop"},
              "spec": {"ingressClassName": "nginx",
                       "rules": [{"host": "legacy.example",
                                  "http": {"paths": [path("/", "web")]}}]}}  # fmt: skip
    manifest = work / "legacy.yml"
    manifest.write_text(yaml.safe_dump(legacy))
    nm("lab", "apply", "--name", paths.name, "-f", str(manifest))
    copy = {**legacy, "metadata": {"name": "legacy-nodemesh", "namespace": "shop"}}
    try:
        ask = ["-H", "Host: legacy.example", f"http://{VIP}/old"]
        assert curl(paths, ask)[0][0] == "404"  # not nodemesh's class
        plan = json.loads(nm("migrate", "plan", "--lab", paths.name, "-o", "json"))["steps"]
        assert [s["state"] for s in plan if s["id"] == "edge"] == ["todo"], plan
        nm("migrate", "apply", "edge", "--lab", paths.name, "--watch", "0")
        assert (paths.objects / "Ingress" / "shop" / "legacy-nodemesh.yaml").exists()
        got = settles(lambda: curl(paths, ask)[0], lambda r: r[0] == "200", within=30)
        assert json.loads(got[1])["backend"] == "web"
        plan = json.loads(nm("migrate", "plan", "--lab", paths.name, "-o", "json"))["steps"]
        assert [s["state"] for s in plan if s["id"] == "edge"] == ["done"], plan
    finally:
        manifest.write_text(yaml.safe_dump_all([legacy, copy]))
        run("lab", "delete", "--name", paths.name, "-f", str(manifest), check=False)
