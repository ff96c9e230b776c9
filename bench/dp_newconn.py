"""New app connections across nodes, one small request each: latency and agent CPU per connection.

    sudo .venv/bin/python -m bench.dp_newconn [--rates 50,100,200] [--seconds 8] [--rounds 3]
        [--label before] [--out bench/results/dp_newconn-<label>.txt]

A two-node lab (the meshbench manifests: client pod on node1, HTTP server on node2) with the
`direct` (unmeshed) and `nodemesh` paths. For each rate, `rounds` interleaved turns of the C load
generator (bench/meshbench/native/loadgen.c, `--newconn`: open loop, a fresh TCP connection per
POST of 1 KiB, `Connection: close`), direct then nodemesh. Reported per rate: medians over the
rounds of p50/p99 (ms) with their spread (min-max), both agents' CPU per connection (ms, their
process trees' utime+stime over the nodemesh turns divided by completed connections) and the
tunnel TLS handshakes both agents made per connection (`nodemesh_agent_tunnel_handshakes_total`
on their /metrics, when the agent exports it). The machine's load average is written with the
figures: on a shared 2-core machine the latencies are evidence, not benchmarks. Then one
iperf3 stream per path, twice (`--bulk-seconds`, 0 for none): bulk through one tunnel stream.
`--profile DIR` instead runs one turn at the last rate with py-spy on both agents (raw stacks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.meshbench import manifests, native, procstat, workloads
from bench.meshbench.labctl import Lab
from bench.meshbench.manifests import HTTP_PORT, IPERF_PORT, NAMESPACES
from bench.meshbench.workloads import Target

GRPC_SCRIPT = Path(__file__).resolve().parent / "meshbench" / "grpc_echo.py"
PATHS = ("direct", "nodemesh")


def handshakes(lab: Lab) -> float:
    """Tunnel handshakes both agents counted so far (client and server side, any kind)."""
    total = 0.0
    for node in ("node1", "node2"):
        res = subprocess.run(
            ["ip", "netns", "exec", lab.paths.node_netns(node), "curl", "-sf", "-m", "5",
             "http://127.0.0.1:4191/metrics"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        found = False
        for line in res.stdout.splitlines():
            if line.startswith("nodemesh_agent_tunnel_handshakes_total"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        if not found:
            raise KeyError("no nodemesh_agent_tunnel_handshakes_total")
    return total


def metrics_reader(lab: Lab) -> Any:
    """A function returning the handshake count, or None when the agents do not export it."""

    def read() -> float | None:
        try:
            return handshakes(lab)
        except (subprocess.SubprocessError, OSError, KeyError):
            return None

    return read


def turn(target: Target, bins: dict[str, Path], *, rate: int, seconds: float,
         agents: list[int] | None) -> dict[str, Any]:  # fmt: skip
    cpu0 = procstat.cpu_seconds(agents) if agents else 0.0
    raw = workloads.http_raw(target, loadgen=bins["loadgen"], port=HTTP_PORT, rate=rate,
                             duration=seconds, warmup=0.5, conns=64, newconn=True)  # fmt: skip
    cpu = (procstat.cpu_seconds(agents) - cpu0) if agents else 0.0
    s = workloads.summarise(raw)
    s["agent_cpu_s"] = cpu
    return s


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:8.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="50,100,200")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="run")
    ap.add_argument("--out", default="")
    ap.add_argument("--bulk-seconds", type=float, default=5.0, help="one iperf3 stream per path")
    ap.add_argument("--profile", default="", help="py-spy both agents in the last turn (dir)")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    out = Path(args.out or Path(__file__).parent / "results" / f"dp_newconn-{args.label}.txt")
    work = Path(tempfile.mkdtemp(prefix="polbench-"))
    work.chmod(0o755)
    bins = native.build(work / "bin")
    lab = Lab("polb" + uuid.uuid4().hex[:6])
    load_before = os.getloadavg()
    rows: list[str] = []
    try:
        lab.up(nodes=2)
        objs: list[dict[str, Any]] = []
        b = manifests.Binaries(http_server=bins["server"], grpc_script=GRPC_SCRIPT)
        for path in PATHS:
            objs += manifests.path_objects(
                path, bins=b, client_node="node1", server_node="node2", haproxy_dir=None, files=work
            )
        lab.apply(manifests.render(objs), timeout=240)
        targets = {}
        for path in PATHS:
            ns = NAMESPACES[path]
            client = lab.pod(ns, "client")
            targets[path] = Target(lab.pod_netns(client), lab.service_ip(ns, manifests.SERVICE))
        agents = list(lab.agent_pids().values())
        count = metrics_reader(lab)
        time.sleep(2)
        turn(targets["nodemesh"], bins, rate=20, seconds=2, agents=None)  # warm up
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            spies = [
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--subprocesses",
                        "--format",
                        "raw",
                        "-r",
                        "200",
                        "-d",
                        str(int(args.seconds)),
                        "-o",
                        f"{args.profile}/{node}.txt",
                        "--pid",
                        str(pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                for node, pid in lab.agent_pids().items()
            ]
            turn(targets["nodemesh"], bins, rate=rates[-1], seconds=args.seconds, agents=None)
            for spy in spies:
                spy.wait(timeout=120)
            rates = []
        for rate in rates:
            res: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
            hs: list[float] = []
            for _ in range(args.rounds):
                for path in PATHS:
                    before = count() if path == "nodemesh" else None
                    r = turn(targets[path], bins, rate=rate, seconds=args.seconds,
                             agents=agents if path == "nodemesh" else None)  # fmt: skip
                    res[path].append(r)
                    after = count() if path == "nodemesh" else None
                    if before is not None and after is not None and r["completed"]:
                        # The warm-up connections are counted too: per connection sent.
                        hs.append((after - before) / max(r["scheduled"], 1))
            for path in PATHS:
                rs = res[path]
                line = (f"{rate:4d}/s {path:9s} p50 {spread([r['p50_ms'] for r in rs])} ms  "
                        f"p99 {spread([r['p99_ms'] for r in rs])} ms  "
                        f"done {sum(r['completed'] for r in rs)}/"
                        f"{sum(r['scheduled'] for r in rs)} errors "
                        f"{sum(r['errors'] for r in rs)}")  # fmt: skip
                if path == "nodemesh":
                    cpu = [1000 * r["agent_cpu_s"] / max(r["completed"], 1) for r in rs]
                    line += f"  agents' CPU/conn {spread(cpu)} ms"
                    if hs:
                        line += f"  handshakes/conn {statistics.median(hs):.3f}"
                lag = max(r["loadgen"]["lag_p99_ms"] or 0 for r in rs)
                line += f"  loadgen lag p99 max {lag:.2f} ms"
                rows.append(line)
                print(line, flush=True)
        for path in PATHS if args.bulk_seconds > 0 else ():
            got = [
                workloads.bulk(targets[path], port=IPERF_PORT, seconds=args.bulk_seconds)
                for _ in range(2)
            ]
            line = (
                f"bulk    {path:9s} one iperf3 stream, {args.bulk_seconds:g} s: "
                + ", ".join(f"{g['gbit_s']:.2f}" for g in got)
                + " Gbit/s"
            )
            rows.append(line)
            print(line, flush=True)
    finally:
        lab.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    load_after = os.getloadavg()
    text = (
        f"# new connection per request across nodes (bench/dp_newconn.py), {args.label}\n"
        f"# {args.rounds} interleaved rounds of {args.seconds:g} s per rate and path; medians "
        f"(min-max over rounds)\n"
        f"# load average before {load_before[0]:.2f} {load_before[1]:.2f}, after "
        f"{load_after[0]:.2f} {load_after[1]:.2f} (2 cores, shared)\n" + "\n".join(rows) + "\n"
    )
    out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
