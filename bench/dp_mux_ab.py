"""Shared tunnel connections (HTTP/2 CONNECT streams) vs one tunnel connection per app connection,
A/B on the same lab, with long-lived connections: bulk, chatty, h2 at full speed.

    sudo .venv/bin/python -m bench.dp_mux_ab [--lab NAME] [--rounds 3] [--label run]
        [--out bench/results/dp_mux_ab-<label>.txt] [--mux-variant NAME=FILE]

A two-node lab with bench/thirdparty.py's pods (a client pod on node1; nginx h2c, redis and an
iperf3 server on node2; a meshed and a plain namespace). Each round runs both agent modes,
`mux` (the default) and `nomux` (`--no-tunnel-mux`: the agents' DaemonSet re-applied, the
agents restart), in alternating order, and in each mode: one iperf3 stream (`--bulk-seconds`),
redis-benchmark (SET and GET, 20 connections, one request at a time each), h2load at full speed
(8 connections x 10 streams); the plain namespace once per round for the ratios. Reported per
figure: medians over the rounds (min-max) and both agents' CPU per operation (their process
trees' utime+stime over the run divided by what it moved or answered). The load average is
written with the figures (a shared 2-core machine). `--mux-variant old=/tmp/mux.py` adds a
third mode, `old`: the agents run with that file as nodeagent/proxy/mux.py (or as the file
`--variant-of` names) (put in place in this tree for the mode's turn, the agents restarted, the
file restored at the end), so that a change and the code before it are measured on the same
lab, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench import thirdparty as tp
from bench.meshbench import procstat
from bench.meshbench.labctl import Lab
from nodemesh.cli.lab_mesh import mesh_manifest

MODES: dict[str, list[str]] = {"mux": [], "nomux": ["--no-tunnel-mux"]}
IPERF_PORT = 5201
MUX_PY = Path(__file__).resolve().parents[1] / "nodeagent" / "proxy" / "mux.py"
# A variant's agents get an argument that changes nothing (its default), so that the DaemonSet
# changes and they restart on the variant's code.
VARIANT_ARG = "--log-level=info"


def manifest(work: Path) -> str:
    docs = list(yaml.safe_load_all(tp.manifest(work)))
    for ns in tp.SPACES.values():
        iperf = ["iperf3", "--server", "--port", str(IPERF_PORT)]
        docs.append(tp._deployment(ns, "iperf", "node2", iperf, None))
        docs.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "iperf", "namespace": ns},
            "spec": {"selector": {"app": "iperf"},
                     "ports": [{"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT}]},
        })  # fmt: skip
    return yaml.safe_dump_all(docs)


def set_mode(lab: Lab, mode: str, current: str | None, code: dict[str, bytes]) -> None:
    """Re-apply the agents' DaemonSet with this mode's arguments (and code) and wait for the
    new agents; nothing when they already run it."""
    if mode == current:
        return
    if current is None and code.get(mode, code[""]) == code[""]:
        # The agents may already run this mode (the tree's code, these arguments).
        running = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in lab.agent_pids().values()]
        flags = {b"--no-tunnel-mux", VARIANT_ARG.encode()}
        wanted = {a.encode() for a in MODES[mode]}
        if all({f for f in flags if f in cmd} == wanted for cmd in running):
            return
    MUX_PY.write_bytes(code.get(mode, code[""]))
    before = lab.agent_pids()
    lab.apply(mesh_manifest(lab.paths, MODES[mode]))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            now = lab.agent_pids()
        except Exception:  # noqa: BLE001 - the ledger between two agents
            now = {}
        if len(now) == len(before) and set(now.values()).isdisjoint(before.values()):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"agents did not restart for mode {mode}")
    want = "--no-tunnel-mux" in MODES[mode]
    for pid in now.values():
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert (b"--no-tunnel-mux" in cmd) == want, (mode, cmd)
    time.sleep(3)


def iperf(lab: str, ns: str, seconds: float) -> dict[str, float]:
    argv = ["iperf3", "--client", f"iperf.{ns}.svc.cluster.local", "--port", str(IPERF_PORT),
            "--time", str(seconds), "--json", "--omit", "1"]  # fmt: skip
    for attempt in range(3):
        try:
            out = tp.in_client(lab, ns, argv)
            break
        except RuntimeError as e:
            if "busy" not in str(e) or attempt == 2:
                raise
            time.sleep(1)
    data = json.loads(out)
    rec = data["end"]["sum_received"]
    return {"iperf3 Gbit/s": rec["bits_per_second"] / 1e9, "_bytes": float(rec["bytes"])}


IDLE_SECONDS = 3.0


def measure(
    lab: Lab, ns: str, agents: list[int] | None, bulk_seconds: float, tools: set[str]
) -> dict[str, float]:
    """Each figure's CPU is net of what the agents burn when idle (control-plane streams,
    telemetry: measured over IDLE_SECONDS before the run), which at a low rate on a loaded
    machine would otherwise be most of it."""
    got: dict[str, float] = {}
    idle = 0.0
    if agents:
        c0, t0 = procstat.cpu_seconds(agents), time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle = (procstat.cpu_seconds(agents) - c0) / (time.monotonic() - t0)
        got["agents idle CPU s/s"] = idle
    clock = time.monotonic

    def cpu() -> float:
        return procstat.cpu_seconds(agents) - idle * clock() if agents else 0.0

    if "iperf" in tools:
        c0 = cpu()
        r = iperf(lab.name, ns, bulk_seconds)
        c1 = cpu()
        got["iperf3 Gbit/s"] = r["iperf3 Gbit/s"]
        # The whole run moved more than the receiver counted after --omit; per GiB of all of it.
        moved = r["_bytes"] * (bulk_seconds + 1) / bulk_seconds / (1 << 30)
        got["iperf3 agents CPU s/GiB"] = (c1 - c0) / moved
    if "redis" not in tools:
        return got
    c0 = cpu()
    rb = tp.redis_bench(lab.name, ns)
    c1 = cpu()
    got.update({k + " req/s": v for k, v in rb.items()})
    ops = tp.REDIS[tp.REDIS.index("-n") + 1]
    got["redis agents CPU ms/1000 req"] = 1000 * (c1 - c0) / (2 * int(ops) / 1000)
    c0 = cpu()
    t0 = time.monotonic()
    rps = tp.h2load(lab.name, ns)
    took = time.monotonic() - t0
    c1 = cpu()
    got["h2load req/s"] = rps
    got["h2load agents CPU ms/1000 req"] = 1000 * (c1 - c0) / (rps * min(took, 10.0) / 1000)
    return got


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):9.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", help="use this running lab (its namespaces are added, then removed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bulk-seconds", type=float, default=5.0)
    ap.add_argument("--label", default="run")
    ap.add_argument("--out", default="")
    ap.add_argument("--mux-variant", default="", help="NAME=FILE: a mode with that mux.py")
    ap.add_argument(
        "--variant-of",
        default="",
        help="the file a variant replaces (default: "
        "nodeagent/proxy/mux.py), e.g. nodeagent/proxy/tlslayer.py",
    )
    ap.add_argument("--tools", default="iperf,redis", help="iperf, redis (redis and h2load)")
    args = ap.parse_args()
    tools = set(args.tools.split(","))
    global MUX_PY
    if args.variant_of:
        MUX_PY = Path(args.variant_of).resolve()
    code = {"": MUX_PY.read_bytes()}
    if args.mux_variant:
        name, _, file = args.mux_variant.partition("=")
        MODES[name] = [VARIANT_ARG]
        code[name] = Path(file).read_bytes()
    out = Path(args.out or Path(__file__).parent / "results" / f"dp_mux_ab-{args.label}.txt")
    work = Path(tempfile.mkdtemp(prefix="muxab-"))
    work.chmod(0o755)
    lab = Lab(args.lab or "mux" + uuid.uuid4().hex[:5])
    res: dict[str, dict[str, list[float]]] = {m: {} for m in (*MODES, "plain")}
    current: str | None = None
    loads: list[str] = []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    path = work / "ab.yml"
    try:
        if not args.lab:
            lab.up(nodes=2)
        path.write_text(manifest(work))
        lab.apply(path.read_text(), timeout=300)
        for rnd in range(args.rounds):
            order = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))
            for mode in order:
                set_mode(lab, mode, current, code)
                current = mode
                agents = list(lab.agent_pids().values())
                if "redis" in tools:
                    tp.redis_bench(lab.name, tp.SPACES["mesh"])  # warm: connections are made
                load = " ".join(f"{x:.2f}" for x in os.getloadavg())
                got = measure(lab, tp.SPACES["mesh"], agents, args.bulk_seconds, tools)
                line = f"round {rnd + 1} {mode:6s} load {load}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in got.items())  # fmt: skip
                print(line, flush=True)
                loads.append(line)
                for k, v in got.items():
                    res[mode].setdefault(k, []).append(v)
            got = measure(lab, tp.SPACES["plain"], None, args.bulk_seconds, tools)
            print(f"round {rnd + 1} plain: {got}", flush=True)
            for k, v in got.items():
                res["plain"].setdefault(k, []).append(v)
        set_mode(lab, "mux", current, code)
    finally:
        MUX_PY.write_bytes(code[""])
        if args.lab:
            subprocess.run([tp.NODEMESH, "lab", "delete", "--name", lab.name, "-f", str(path)],
                           capture_output=True, timeout=300)  # fmt: skip
        else:
            lab.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    rows = [
        f"# shared tunnel connections (mux) vs one per app connection (nomux), bench/dp_mux_ab.py, "
        f"{args.label}, commit {commit}",
        f"# {args.rounds} rounds, modes alternating; medians (min-max); plain = unmeshed pods",
        f"# load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(2 cores, shared)",
    ]
    keys = list(res["mux"])
    cols = [*MODES, "plain"]
    rows.append(f"{'figure':32s} " + " ".join(f"{m:>24s}" for m in cols))
    for k in keys:
        cells = [spread(res[m][k]) if res[m].get(k) and not ("CPU" in k and m == "plain")
                 else "" for m in cols]  # fmt: skip
        rows.append(f"{k:32s} " + " ".join(f"{c:>24s}" for c in cells))
    for tool, plain_key in (("h2load", "h2load req/s"), ("redis SET", "redis-benchmark SET req/s"),
                            ("redis GET", "redis-benchmark GET req/s")):  # fmt: skip
        for m in MODES if plain_key in res["plain"] else ():
            ratios = [a / b for a, b in zip(res[m][plain_key], res["plain"][plain_key],
                                            strict=False)]  # fmt: skip
            rows.append(f"{tool} {m}/plain: {spread(ratios)}")
    rows += ["# per turn:", *loads]
    text = "\n".join(rows) + "\n"
    out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
