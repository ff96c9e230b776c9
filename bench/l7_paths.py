"""Relay path vs L7 path in a one-node lab (root), with hey: the same HTTP/1.1 server behind two
Services, `plain` (no route: the relay) and `routed` (an HTTPRoute with a timeout and a retry
rule under the default budget: the L7 path). Results: bench/results/l7_paths.txt.

    sudo .venv/bin/python -m bench.l7_paths [--requests 4000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
APPS = str(Path(__file__).resolve().parents[1] / "tests/integration/routes_lab_apps.py")
NS = "l7b"


def nm(*args: str) -> str:
    return subprocess.run([NODEMESH, *args], check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def one_node_lab(prefix: str, manifest: str) -> Iterator[str]:
    """A one-node lab with `manifest` applied and ready; its name. Removed on the way out."""
    lab = prefix + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", lab, "--nodes", "1", "--api-port", "0", "--dashboard-port", "0")
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            f.write(manifest)
            f.flush()
            nm("lab", "apply", "--name", lab, "-f", f.name, "--wait", "--timeout", "180")
        yield lab
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", lab], capture_output=True)


def client_manifest(ns: str) -> str:
    """A meshed namespace with a `client` Deployment to run curl and hey from."""
    return f"""apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{nodemesh.io/mesh: enabled}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec: {{containers: [{{name: main, command: [sleep, '3600']}}]}}
"""


def manifests() -> str:
    py = sys.executable
    return client_manifest(NS) + f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: server, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  template:
    metadata: {{labels: {{app: server}}}}
    spec:
      containers:
      - name: main
        command: [{py}, {APPS}, http, '8080', '0']
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: {NS}}}
spec: {{selector: {{app: server}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: routed, namespace: {NS}}}
spec: {{selector: {{app: server}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: routed, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: routed, port: 80}}]
  rules:
  - backendRefs: [{{name: routed, port: 80}}]
    timeouts: {{request: 5s}}
    retry: {{codes: [503], attempts: 2}}
"""


def hey(lab: str, svc: str, n: int, c: int) -> str:
    url = f"http://{svc}.{NS}.svc.cluster.local/"
    out = nm("lab", "exec", "--name", lab, "-n", NS, "deploy/client", "--",
             "hey", "-n", str(n), "-c", str(c), url)  # fmt: skip
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    p99 = re.search(r"99%+ in ([\d.]+) secs", out)
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    assert rps and p50 and p99, out
    return (f"{svc:7s} {float(rps[1]):8.0f} rps  p50 {float(p50[1]) * 1000:6.2f} ms  "
            f"p99 {float(p99[1]) * 1000:6.2f} ms  statuses {dict(codes)}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "l7_paths.txt"))
    args = ap.parse_args()
    with one_node_lab("l7b", manifests()) as lab:
        subprocess.run(["sleep", "2"], check=True)
        hey(lab, "plain", 200, args.concurrency)  # warm both paths
        hey(lab, "routed", 200, args.concurrency)
        rows = [hey(lab, svc, args.requests, args.concurrency) for svc in ("plain", "routed")]
    text = (f"# relay (plain) vs L7 path (routed), hey -n {args.requests} -c {args.concurrency}, "
            "one-node lab, HTTP/1.1 keep-alive\n" + "\n".join(rows) + "\n")  # fmt: skip
    Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
