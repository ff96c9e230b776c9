"""Quick data-plane figures on a lab (root): added latency through two agents vs direct, agent
CPU per 1000 rps, and what a new connection costs.

    sudo .venv/bin/python bench/dp_latency.py [--lab NAME] [--rps 500] [--seconds 20]

Without --lab it brings a 2-node lab up (and down). Workload: tests/integration/dp_lab_apps.py's
HTTP server, `dp/echo` (meshed) and `dpplain/plainecho` (not meshed) on node2; clients on node1:
`dp/client` (meshed: its agent, mTLS, echo's agent) and `dpplain/outsider` (no agent at all).
Open loop: requests are scheduled at a fixed rate over keep-alive connections and latency is
measured from the scheduled time, so a stall is not hidden by the client slowing down.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODEMESH = str(REPO / ".venv" / "bin" / "nodemesh")
sys.path.insert(0, str(REPO / "tests" / "integration"))


# --- runs inside a pod (via `lab exec`) ----------------------------------------------------


def client(host: str, port: int, rps: float, seconds: float, conns: int, fresh: bool) -> None:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per = rps / conns
    start = time.monotonic() + 0.2
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def work(i: int) -> None:
        sock = None
        n = 0
        while True:
            due = start + (n + i / conns) / per
            if due > start + seconds:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                if sock is None or fresh:
                    if sock is not None:
                        sock.close()
                    sock = socket.create_connection((host, port), timeout=5)
                sock.sendall(req)
                buf = b""
                while b"\r\n\r\n" not in buf:
                    buf += sock.recv(4096)
                head, _, body = buf.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += sock.recv(4096)
                with lock:
                    lat.append(time.monotonic() - due)
            except OSError:
                with lock:
                    errors[0] += 1
                sock = None
            n += 1
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat.sort()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    print(json.dumps({"n": len(lat), "errors": errors[0], "p50": q(0.5), "p99": q(0.99)}))


PLAIN_ECHO = """---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: plainecho, namespace: dpplain}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: plainecho}}}}
  template:
    metadata: {{labels: {{app: plainecho}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: node2}}
      containers:
      - {{name: http, command: [python3, {apps}, http]}}
"""


# --- the harness -----------------------------------------------------------------------------


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"nodemesh {' '.join(args)}: {res.stderr}")
    return res.stdout


def agent_cpu(lab: str) -> dict[str, float]:
    """CPU seconds used so far by each node's agent process."""
    out = {}
    for line in subprocess.run(
        ["ps", "-eo", "pid,args"], capture_output=True, text=True
    ).stdout.splitlines():
        if f"/run/nodemesh/{lab}/nodes/" in line and "nodemesh-agent" in line:
            pid = line.split()[0]
            node = line.split("--node=")[1].split()[0]
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[node] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def run(
    lab: str, ns: str, pod: str, host: str, *, rps: float, seconds: float, conns: int, fresh: bool
) -> dict[str, float]:
    out = nm("lab", "exec", "--name", lab, "-n", ns, pod, "--", sys.executable, __file__,
             "client", host, "8080", str(rps), str(seconds), str(conns), "1" if fresh else "0",
             timeout=seconds + 120)  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lab")
    p.add_argument("--rps", type=float, default=500)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--conns", type=int, default=8)
    args = p.parse_args()
    import test_dp_lab as t

    lab = args.lab or "dpb" + uuid.uuid4().hex[:5]
    try:
        if not args.lab:
            nm("lab", "up", "--name", lab, "--nodes", "2", "--api-port", "0")
        f = Path(f"/tmp/{lab}-bench.yml")
        f.write_text(t.manifest(echo_replicas=1) + PLAIN_ECHO.format(apps=t.APPS))
        nm("lab", "apply", "--name", lab, "-f", str(f), "--wait")
        st = json.loads(nm("lab", "status", "--name", lab, "-o", "json"))
        ip = {
            p["name"].split("-")[0]: p["ip"]
            for p in st["pods"]
            if p["name"].startswith(("echo", "plainecho"))
        }
        results = {}
        for label, ns, pod, host, fresh, rps in (
            ("direct", "dpplain", "deploy/outsider", ip["plainecho"], False, args.rps),
            ("mesh", "dp", "deploy/client", ip["echo"], False, args.rps),
            ("direct-new-conn", "dpplain", "deploy/outsider", ip["plainecho"], True, 100),
            ("mesh-new-conn", "dp", "deploy/client", ip["echo"], True, 100),
        ):
            before = agent_cpu(lab)
            res = run(
                lab, ns, pod, host, rps=rps, seconds=args.seconds, conns=args.conns, fresh=fresh
            )
            after = agent_cpu(lab)
            cpu = sum(after.values()) - sum(before.values())
            res["agents_cpu_s"] = round(cpu, 2)
            res["agent_vcpu_per_1000rps_each"] = round(cpu / args.seconds / 2 / (rps / 1000), 3)
            results[label] = res
            print(label, json.dumps(res), flush=True)
        d, m = results["direct"], results["mesh"]
        added = f"added p50 {m['p50'] - d['p50']:.2f} ms, p99 {m['p99'] - d['p99']:.2f} ms"
        print(f"{added} at {args.rps:.0f} rps")
    finally:
        if not args.lab:
            subprocess.run([NODEMESH, "lab", "down", "--name", lab], capture_output=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        a = sys.argv[2:]
        client(a[0], int(a[1]), float(a[2]), float(a[3]), int(a[4]), a[5] == "1")
    else:
        main()
