"""Third-party tools through the mesh vs plain, on the same lab: h2load and redis-benchmark.

    .venv/bin/python bench/thirdparty.py [--lab NAME] [--rounds 3] [--out bench/results]

Run as root from the repository root. Two namespaces of the same shape, one meshed
(`nodemesh.io/mesh=enabled`) and one plain: nginx (h2c on 8081) and redis-server on node2, an
idle client pod on node1 from which the tools run (`lab exec`, in the client's netns, so the
meshed one's traffic goes through both agents). Each round runs every tool on plain then on
mesh, back to back; the figures are the medians over the rounds with their range. Targets
(issue 17): h2load at full speed >= 50% of plain, redis-benchmark >= 60% of plain. Without
--lab it brings up its own lab and takes it down again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NODEMESH = str(Path(sys.executable).parent / "nodemesh")
SPACES = {"plain": "tpbench-plain", "mesh": "tpbench-mesh"}
# Full speed for a fixed time: a stream that stalls (it happens through the mesh, see the
# report) costs its connection, not the whole run; -N drops a connection silent for 5 s.
H2LOAD = ["h2load", "-D", "10", "-c", "8", "-m", "10", "-t", "1", "-N", "5"]
REDIS = ["redis-benchmark", "--csv", "-n", "20000", "-c", "20", "-t", "set,get", "-P", "1"]
GOALS = {"h2load": 0.5, "redis-benchmark SET": 0.6, "redis-benchmark GET": 0.6}


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}")
    return res.stdout


def _nginx_conf(work: Path) -> Path:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; client_body_temp_path {work}/body; "
        f"proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi; "
        f"uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi; "
        "keepalive_requests 1000000; http2_max_requests 1000000;\n"
        '  server { listen 8081 http2; location / { return 200 "ok\\n"; } } }\n'
    )
    return conf


def _deployment(ns: str, name: str, node: str, command: list[str], work: Path | None) -> Any:
    container: dict[str, Any] = {"name": name, "image": f"debian/{name}", "command": command}
    volumes: list[dict[str, Any]] = []
    if work is not None:
        container["volumeMounts"] = [{"name": "work", "mountPath": str(work)}]
        volumes = [{"name": "work", "hostPath": {"path": str(work), "type": "Directory"}}]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                                       "containers": [container], "volumes": volumes}}},
    }  # fmt: skip


def manifest(work: Path) -> str:
    docs: list[Any] = []
    for kind, ns in SPACES.items():
        wdir = work / kind
        wdir.mkdir(parents=True, exist_ok=True)
        conf = _nginx_conf(wdir)
        labels = {"nodemesh.io/mesh": "enabled"} if kind == "mesh" else {}
        redis = ["redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
                 "--save", "", "--appendonly", "no", "--dir", str(wdir)]  # fmt: skip
        docs += [
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": ns, "labels": labels}},
            _deployment(ns, "client", "node1", ["sleep", "100000"], None),
            _deployment(ns, "nginx", "node2", ["nginx", "-c", str(conf)], wdir),
            _deployment(ns, "redis", "node2", redis, wdir),
        ]  # fmt: skip
        for name, port in (("nginx", 8081), ("redis", 6379)):
            docs.append({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"app": name},
                         "ports": [{"name": f"p{port}", "port": port, "targetPort": port}]},
            })  # fmt: skip
    return yaml.safe_dump_all(docs)


def in_client(lab: str, ns: str, argv: list[str]) -> str:
    return nm("lab", "exec", "--name", lab, "-n", ns, "deploy/client", "--", *argv, timeout=300)


def h2load(lab: str, ns: str) -> float:
    """Requests answered per second (succeeded ones only, over the whole run)."""
    out = in_client(lab, ns, [*H2LOAD, f"http://nginx.{ns}.svc.cluster.local:8081/"])
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    took = re.search(r"finished in ([\d.]+)(m?s),", out)
    if not done or not took:
        raise RuntimeError(f"h2load in {ns}: no figures:\n{out}")
    seconds = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)
    return int(done.group(2)) / seconds


def redis_bench(lab: str, ns: str) -> dict[str, float]:
    out = in_client(lab, ns, [*REDIS, "-h", f"redis.{ns}.svc.cluster.local"])
    pattern = r'^"(SET|GET)","([\d.]+)"'
    found = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, out, re.M)}
    if set(found) != {"SET", "GET"}:
        raise RuntimeError(f"redis-benchmark in {ns}: no figures:\n{out}")
    return {f"redis-benchmark {k}": v for k, v in found.items()}


def run(lab: str, rounds: int) -> dict[str, Any]:
    figures: dict[str, dict[str, list[float]]] = {k: {} for k in SPACES}
    for r in range(rounds):
        for kind, ns in SPACES.items():
            got: dict[str, float] = {}
            for measure in (lambda ns=ns: {"h2load": h2load(lab, ns)},
                            lambda ns=ns: redis_bench(lab, ns)):  # fmt: skip
                try:
                    got.update(measure())
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"round {r + 1} {kind}: failed: {str(exc)[-500:]}", flush=True)
                    figures[kind].setdefault("failures", []).append(str(exc)[-2000:])  # type: ignore[arg-type]
            print(f"round {r + 1} {kind}: {got}", flush=True)
            for k, v in got.items():
                figures[kind].setdefault(k, []).append(v)
    rows = []
    for tool, goal in GOALS.items():
        plain, mesh = figures["plain"].get(tool, []), figures["mesh"].get(tool, [])
        ratios = [m / p for m, p in zip(mesh, plain, strict=False)]
        if not ratios:
            rows.append({"tool": tool, "plain_rps": None, "mesh_rps": None, "ratio": None,
                         "ratio_range": [None, None], "goal": goal, "met": None})  # fmt: skip
            continue
        ratio = statistics.median(ratios)
        rows.append({
            "tool": tool, "plain_rps": statistics.median(plain),
            "mesh_rps": statistics.median(mesh), "ratio": round(ratio, 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "goal": goal, "met": min(ratios) >= goal,
        })  # fmt: skip
    return {"rounds": rounds, "rows": rows, "raw": figures,
            "commands": {"h2load": H2LOAD, "redis-benchmark": REDIS}}  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Third-party tools through the mesh vs plain",
        "",
        f"- date: {res['date']}; commit: `{res['commit']}`",
        f"- machine: {res['machine']}; load average {res['load_start']} at start, "
        f"{res['load_end']} at end (shared machine)",
        f"- lab: client pod on node1, nginx (h2c) and redis on node2; medians over "
        f"{res['rounds']} rounds (plain and mesh back to back in each)",
        f"- h2load: `{' '.join(H2LOAD)}`; redis-benchmark: `{' '.join(REDIS)}`",
        "",
        "| tool | plain req/s | mesh req/s | mesh/plain (range) | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lo, hi = r["ratio_range"]
        if r["ratio"] is None:
            lines.append(f"| {r['tool']} | - | - | - | >= {r['goal']:.0%} | failed |")
            continue
        lines.append(
            f"| {r['tool']} | {r['plain_rps']:.0f} | {r['mesh_rps']:.0f} | {r['ratio']:.2f} "
            f"({lo:.2f}-{hi:.2f}) | >= {r['goal']:.0%} | {'yes' if r['met'] else 'no'} |"
        )
    lines += ["", "Met only when every round's ratio is at or over the goal."]
    for kind, figures in res["raw"].items():
        failures = figures.get("failures") or []
        if failures:
            lines.append(f"- {kind}: {len(failures)} run(s) failed (see the JSON), e.g. "
                         f"`{failures[0].splitlines()[-1][:200]}`")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lab", help="use this running lab (left up, the namespaces removed)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 1
    lab = args.lab or "tpb" + secrets.token_hex(3)
    work = Path(tempfile.mkdtemp(prefix="nodemesh-tpbench-"))
    work.chmod(0o755)
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), "?",
    )  # fmt: skip
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "machine": f"{os.cpu_count()} x {cpu}",
        "load_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    path = work / "tp.yml"
    try:
        if not args.lab:
            nm("lab", "up", "--name", lab, "--nodes", "2", "--api-port", "0",
               "--dashboard-port", "0", timeout=600)  # fmt: skip
        path.write_text(manifest(work))
        nm("lab", "apply", "--name", lab, "-f", str(path), "--wait", "--timeout", "300",
           timeout=400)  # fmt: skip
        time.sleep(2)
        res.update(run(lab, args.rounds))
    finally:
        if args.lab:
            subprocess.run([NODEMESH, "lab", "delete", "--name", lab, "-f", str(path)],
                           capture_output=True, timeout=300)  # fmt: skip
        else:
            subprocess.run([NODEMESH, "lab", "down", "--name", lab], capture_output=True,
                           timeout=300)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    res["load_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    stamp = res["date"].replace(":", "").replace("-", "")[:15]
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"thirdparty-{stamp}-{res['commit'][:8]}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    base.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
