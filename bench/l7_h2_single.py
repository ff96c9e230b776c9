"""A single-endpoint gRPC Service: relay vs L7 path, agent CPU per call (root, one-node lab).

What sending every HTTP/2 connection to a Service VIP through the L7 path would cost where the
relay serves today (one ready endpoint, no route). One gRPC server pod
(tests/integration/routes_lab_apps.py `grpc`) behind `relay` (no route: the relay) and `l7` (a
GRPCRoute with one backend and nothing else: the L7 path); h2load in a meshed client pod sends
unary calls of /test.Who/Name on one connection (`-c 1 -m M`), the two Services in turn for
`--rounds` rounds. "agent CPU" is the node agent's user+system CPU over a run divided by the calls
answered (the agent serves both the client's outbound and the server's inbound side here; the
inbound side is the same for both Services). Results: bench/results/l7_h2_single.md.

    sudo .venv/bin/python -m bench.l7_h2_single [--calls 3000] [--streams 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.l7_paths import agent_pid, client_manifest, cpu_seconds, loadavg, nm, one_node_lab

APPS = str(Path(__file__).resolve().parents[1] / "tests/integration/routes_lab_apps.py")
NS = "l7h2"


def manifests() -> str:
    py = sys.executable
    services = "".join(
        f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec: {{selector: {{app: server}}, ports: [{{port: 8080, targetPort: 8080}}]}}
"""
        for name in ("relay", "l7")
    )
    return (
        client_manifest(NS)
        + f"""---
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
        command: [{py}, {APPS}, grpc, '8080']
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"""
        + services
        + f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: l7, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: l7, port: 8080}}]
  rules:
  - backendRefs: [{{name: l7, port: 8080}}]
"""
    )


def run(lab: str, pid: int, vip: str, calls: int, streams: int, body: Path) -> dict[str, float]:
    from nodemesh.lab.paths import LabPaths

    st = json.loads(nm("lab", "status", "--name", lab, "-o", "json"))
    client = next(p["name"] for p in st["pods"] if p["name"].startswith("client-"))
    netns = LabPaths(lab).pod_netns(NS, client)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "h2load", "-t", "1", "-c", "1", "-m", str(streams),
         "-n", str(calls), "-d", str(body), "-H", "content-type: application/grpc",
         "-H", "te: trailers", f"http://{vip}:8080/test.Who/Name"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    done = int(out.split("requests:", 1)[1].split("succeeded")[0].split(",")[-2].split()[0])
    return {"cpu_ms_per_call": cpu / done * 1000, "calls_per_s": done / wall, "done": done}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, one_node_lab("l7h2", manifests()) as lab:
        body = Path(tmp) / "call.bin"
        body.write_bytes(b"\x00\x00\x00\x00\x00")  # one empty gRPC message
        st = json.loads(nm("lab", "status", "--name", lab, "-o", "json"))
        vips = {s["name"]: s["clusterIP"] for s in st["services"] if s["namespace"] == NS}
        pid = agent_pid(lab)
        rows: dict[str, list[dict[str, float]]] = {"relay": [], "l7": []}
        load_before = loadavg()
        for _ in range(args.rounds):
            for svc in rows:
                rows[svc].append(run(lab, pid, vips[svc], args.calls, args.streams, body))
        load_after = loadavg()
    print(f"calls {args.calls} x {args.rounds} rounds, {args.streams} stream(s) in flight; "
          f"load average {load_before} -> {load_after}")  # fmt: skip
    for svc, rs in rows.items():
        cpu = [r["cpu_ms_per_call"] for r in rs]
        rate = [r["calls_per_s"] for r in rs]
        print(f"{svc:6s} agent CPU {statistics.median(cpu):.3f} ms/call "
              f"[{min(cpu):.3f}-{max(cpu):.3f}]  {statistics.median(rate):.0f} calls/s "
              f"[{min(rate):.0f}-{max(rate):.0f}]")  # fmt: skip


if __name__ == "__main__":
    main()
