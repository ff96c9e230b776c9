"""Relay path vs L7 path in a one-node lab (root), with hey: the same HTTP/1.1 server behind two
Services, `plain` (no route: the relay) and `routed` (an HTTPRoute with a timeout and a retry
rule under the default budget: the L7 path). Results: bench/results/l7_paths.txt.

    sudo .venv/bin/python -m bench.l7_paths [--requests 4000] [--concurrency 4]
    sudo .venv/bin/python -m bench.l7_paths --rates [--seconds 10] [--rate 200] [--label after]

`--rates`: fixed-rate runs instead (hey -q), keep-alive and a new connection per request, each
path in turn for `--rounds` rounds (medians and spread), with the agent's CPU seconds per 1000
requests and the load average around the run; appended to bench/results/l7_rates.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
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
    )


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


def agent_pid(lab: str) -> int:
    from nodemesh.lab.paths import LabPaths

    netns = LabPaths(lab).node_netns("node1")
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                          check=True).stdout.split()  # fmt: skip
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"nodemesh-agent") for part in cmdline[:2]):
            return int(pid)
    raise RuntimeError(f"no nodemesh-agent in {netns}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rate_run(lab: str, pid: int, svc: str, rate: int, seconds: float, newconn: bool) -> dict:
    url = f"http://{svc}.{NS}.svc.cluster.local/"
    conns = 4
    args = ["hey", "-z", f"{seconds}s", "-c", str(conns), "-q", str(rate // conns)]
    if newconn:
        args.append("-disable-keepalive")
    cpu0 = cpu_seconds(pid)
    out = nm("lab", "exec", "--name", lab, "-n", NS, "deploy/client", "--", *args, url)
    cpu = cpu_seconds(pid) - cpu0
    done = sum(int(n) for n in re.findall(r"\[\d{3}\]\s+(\d+) responses", out))
    ok = sum(int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out) if c == "200")
    q = {k: re.search(rf"{k}%+ in ([\d.]+) secs", out) for k in ("50", "99")}
    return {
        "p50_ms": float(q["50"][1]) * 1000 if q["50"] else float("nan"),
        "p99_ms": float(q["99"][1]) * 1000 if q["99"] else float("nan"),
        "rps": done / seconds, "ok": ok, "done": done,
        "cpu_per_1000": cpu / done * 1000 if done else float("nan"),
    }  # fmt: skip


def rates(args: argparse.Namespace) -> None:
    import statistics

    rows: dict[tuple[str, str], list[dict]] = {}
    with one_node_lab("l7b", manifests()) as lab:
        subprocess.run(["sleep", "2"], check=True)
        pid = agent_pid(lab)
        hey(lab, "plain", 200, 4)  # warm both paths
        hey(lab, "routed", 200, 4)
        load_before = loadavg()
        for _ in range(args.rounds):
            for kind in ("keep-alive", "new connection each"):
                for svc in ("plain", "routed"):
                    r = rate_run(lab, pid, svc, args.rate, args.seconds, kind != "keep-alive")
                    rows.setdefault((kind, svc), []).append(r)
        load_after = loadavg()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [
        f"## {args.label}: {stamp}, commit {commit()}, {args.rate} rps, {args.rounds} rounds of "
        f"{args.seconds:g} s per row, load average {load_before} -> {load_after}",
        "",
        "| load | path | p50 ms (spread) | p99 ms (spread) | achieved rps | 200s / done | "
        "agent CPU s / 1000 req |",
        "|---|---|---|---|---|---|---|",
    ]
    for (kind, svc), rs in rows.items():

        def med(key: str, rs: list[dict] = rs) -> str:
            vals = [r[key] for r in rs]
            return f"{statistics.median(vals):.3g} ({min(vals):.3g}-{max(vals):.3g})"

        path = "relay (plain)" if svc == "plain" else "L7 (routed)"
        ok = sum(r["ok"] for r in rs)
        done = sum(r["done"] for r in rs)
        rps = statistics.median(r["rps"] for r in rs)
        cpu = statistics.median(r["cpu_per_1000"] for r in rs)
        lines.append(f"| {kind} | {path} | {med('p50_ms')} | {med('p99_ms')} | {rps:.0f} | "
                     f"{ok}/{done} | {cpu:.3f} |")  # fmt: skip
    text = "\n".join(lines) + "\n\n"
    with open(args.rates_out, "a") as f:
        f.write(text)
    print(text, end="")


def commit() -> str:
    res = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    here = str(Path(__file__).parent)
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "../nodeagent"],
                           capture_output=True, text=True).stdout  # fmt: skip
    return res.stdout.strip() + ("+changes" if dirty.strip() else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "l7_paths.txt"))
    ap.add_argument("--rates", action="store_true", help="fixed-rate runs (see the docstring)")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="run")
    ap.add_argument("--rates-out", default=str(Path(__file__).parent / "results" / "l7_rates.md"))
    args = ap.parse_args()
    if args.rates:
        rates(args)
        return
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
