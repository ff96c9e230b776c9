"""`lab up --prometheus`: Debian's prometheus runs as a pod scraping every node agent (file_sd
from the lab's nodes) and the control plane answers stat from it. For a fixed run of hey
through the mesh, stat from Prometheus equals stat from the embedded store (requests and success
rate exact, latency quantiles within Linkerd's buckets) and hey's own count, and a query taken
from Linkerd's Grafana dashboards returns the run."""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from nodeagent.observe.stats.series import LATENCY_BOUNDS_MS
from nodemesh.api import public_pb2 as pb
from nodemesh.api import public_pb2_grpc as pb_grpc
from nodemesh.lab.paths import LabPaths

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
NS = "promlab"
# Bounded for CI; set higher by hand for a longer run.
HEY_REQUESTS = int(os.environ.get("NODEMESH_PROM_HEY_REQUESTS", "400"))


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _deployment(name: str, node: str, command: list[str], work: Path | None = None) -> Any:
    container: dict[str, Any] = {"name": name, "image": f"debian/{name}", "command": command}
    spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": node}}
    if work is not None:
        container["volumeMounts"] = [{"name": "work", "mountPath": str(work)}]
        spec["volumes"] = [{"name": "work", "hostPath": {"path": str(work), "type": "Directory"}}]
        container["readinessProbe"] = {
            "exec": {
                "command": [
                    "python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 8080), 2)"
                ]
            },
            "periodSeconds": 2, "timeoutSeconds": 20, "failureThreshold": 30,
        }  # fmt: skip
    spec["containers"] = [container]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def _manifest(tmp: Path) -> str:
    t = tmp / "nginx"
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (t / d).mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {t}/nginx.pid; error_log {t}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; client_body_temp_path {t}/body; proxy_temp_path {t}/proxy;\n"
        f"  fastcgi_temp_path {t}/fastcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;\n"
        '  server { listen 8080; location / { return 200 "ok\\n"; }\n'
        '    location /fail { return 503 "no\\n"; } } }\n'
    )
    docs = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NS, "labels": {"nodemesh.io/mesh": "enabled"}}},
        _deployment("client", "node1", ["sleep", "100000"]),
        _deployment("nginx", "node2", ["nginx", "-c", str(conf)], tmp),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nginx", "namespace": NS},
         "spec": {"selector": {"app": "nginx"},
                  "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}},
    ]  # fmt: skip
    return yaml.safe_dump_all(docs)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    name = "prq" + uuid.uuid4().hex[:6]
    tmp = tmp_path_factory.mktemp("promlab")
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--prometheus", "--api-port", "0",
           "--dashboard-port", "0", "--prometheus-port", "0")  # fmt: skip
        st = json.loads(nm("lab", "status", "--name", name, "-o", "json"))
        ports = {f["service"]: f["local_port"] for f in st["forwards"]}
        path = tmp / "promlab.yml"
        path.write_text(_manifest(tmp))
        nm("lab", "apply", "--name", name, "-f", str(path), "--wait", "--timeout", "180")
        yield {
            "paths": LabPaths(name),
            "api": ports["nodemesh-controlplane"],
            "prometheus": f"http://127.0.0.1:{ports['nodemesh-prometheus']}",
        }
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def hey(lab: dict[str, Any], n: int, url: str) -> dict[str, int]:
    out = nm("lab", "exec", "--name", lab["paths"].name, "-n", NS, "deploy/client", "--",
             "hey", "-n", str(n), "-c", "4", url, timeout=240)  # fmt: skip
    assert "Error distribution" not in out, out
    return {code: int(k) for code, k in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}


def stat(lab: dict[str, Any], *, embedded: bool) -> pb.StatRow:
    token = (lab["paths"].access / "admin.token").read_text().strip()
    md = [("authorization", f"Bearer {token}")]
    if embedded:
        md.append(("nodemesh-stats-source", "embedded"))
    with grpc.insecure_channel(f"127.0.0.1:{lab['api']}") as ch:
        resp = pb_grpc.PublicStub(ch).Stat(
            pb.StatRequest(
                resource=pb.Resource(kind="deploy", namespace=NS, name="nginx"),
                window_seconds=300,
            ),
            timeout=30,
            metadata=md,
        )
    (row,) = resp.rows
    return row


def _bucket(ms: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, ms)


def test_stat_from_prometheus_equals_the_embedded_store(lab: dict[str, Any]) -> None:
    ok = hey(lab, HEY_REQUESTS, "http://nginx:8080/")
    failed = hey(lab, HEY_REQUESTS // 4, "http://nginx:8080/fail")
    assert ok == {"200": HEY_REQUESTS} and failed == {"503": HEY_REQUESTS // 4}
    total = HEY_REQUESTS + HEY_REQUESTS // 4
    deadline = time.monotonic() + 60
    while True:
        prom, embedded = stat(lab, embedded=False), stat(lab, embedded=True)
        if prom.requests == embedded.requests == total:
            break
        assert time.monotonic() < deadline, (total, prom, embedded)
        time.sleep(1)
    print(f"prometheus: {prom}\nembedded: {embedded}".replace("\n\n", "\n"))
    assert prom.success_rate == embedded.success_rate == pytest.approx(HEY_REQUESTS / total)
    for q in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
        p, e = getattr(prom, q), getattr(embedded, q)
        assert p > 0 and e > 0, (q, prom, embedded)
        assert abs(_bucket(p) - _bucket(e)) <= 1, (q, p, e)


def test_a_linkerd_dashboard_query_returns_the_run(lab: dict[str, Any]) -> None:
    hey(lab, 50, "http://nginx:8080/")
    # linkerd2 grafana/dashboards/top-line.json, "DEPLOYMENTS MONITORED" with $namespace set.
    query = f'count(count(request_total{{namespace=~"{NS}"}}) by (namespace, deployment))'
    deadline = time.monotonic() + 60
    while True:
        url = f"{lab['prometheus']}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as resp:
            result = json.loads(resp.read())["data"]["result"]
        if result and float(result[0]["value"][1]) >= 2:  # client and nginx
            return
        assert time.monotonic() < deadline, result
        time.sleep(1)
