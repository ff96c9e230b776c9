"""How close a route's `timeouts.request` is kept: a one-node lab, a backend whose /slow answers
after 1 s behind a Service with an HTTPRoute `timeouts: {request: 200ms}`; curl from a meshed
client, sequentially, its own `time_total` per request. Issue 15's target: 504 at 200 ms ±50 ms.
Results: bench/results/route_timeout.txt.

    sudo .venv/bin/python -m bench.route_timeout [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
APPS = str(Path(__file__).resolve().parents[1] / "tests/integration/routes_lab_apps.py")
NS = "rtmo"
TIMEOUT_MS = 200


def nm(*args: str) -> str:
    return subprocess.run([NODEMESH, *args], check=True, capture_output=True, text=True).stdout


def manifests() -> str:
    py = sys.executable
    return f"""apiVersion: v1
kind: Namespace
metadata: {{name: {NS}, labels: {{nodemesh.io/mesh: enabled}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec: {{containers: [{{name: main, command: [sleep, '3600']}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: slow, namespace: {NS}}}
spec:
  selector: {{matchLabels: {{app: slow}}}}
  template:
    metadata: {{labels: {{app: slow}}}}
    spec:
      containers:
      - name: main
        command: [{py}, {APPS}, http, '8080', '0']
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: slow, namespace: {NS}}}
spec: {{selector: {{app: slow}}, ports: [{{port: 80, targetPort: 8080}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: slow, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: slow, port: 80}}]
  rules:
  - backendRefs: [{{name: slow, port: 80}}]
    timeouts: {{request: {TIMEOUT_MS}ms}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "route_timeout.txt"))
    args = ap.parse_args()
    lab = "rtmo" + uuid.uuid4().hex[:6]
    script = (
        'for i in $(seq "$1"); do curl -s -o /dev/null -w "%{http_code} %{time_total}\\n" '
        f'"http://slow.{NS}.svc.cluster.local/slow"; done'
    )
    try:
        nm("lab", "up", "--name", lab, "--nodes", "1", "--api-port", "0", "--dashboard-port", "0")
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
            f.write(manifests())
            f.flush()
            nm("lab", "apply", "--name", lab, "-f", f.name, "--wait", "--timeout", "180")
        out = nm("lab", "exec", "--name", lab, "-n", NS, "deploy/client", "--",
                 "sh", "-c", script, "sh", str(args.requests))  # fmt: skip
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", lab], capture_output=True)
    pairs = [line.split() for line in out.splitlines() if line.strip()]
    codes = {c: sum(1 for k, _ in pairs if k == c) for c in {k for k, _ in pairs}}
    ms = sorted(float(t) * 1000 for _, t in pairs)
    inside = sum(1 for m in ms if abs(m - TIMEOUT_MS) <= 50)
    load = os.getloadavg()
    text = (
        f"# timeouts.request {TIMEOUT_MS} ms against a 1 s backend, {len(ms)} sequential curls, "
        f"one-node lab, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n"
        f"statuses {codes}\n"
        f"time_total ms: min {ms[0]:.1f} p50 {statistics.median(ms):.1f} "
        f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} max {ms[-1]:.1f}\n"
        f"within {TIMEOUT_MS} ms +-50 ms: {inside} of {len(ms)}\n"
    )
    Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
