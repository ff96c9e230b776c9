"""Agent CPU per request, both agents: HTTP/1 keep-alive observed and opaque, code variants A/B.

    sudo .venv/bin/python -m bench.dp_cpu [--lab NAME] [--rounds 3] [--rate 1000]
        [--seconds 10] [--variant NAME=GITREF ...] [--out FILE] [--profile DIR]

`make bench`'s nodemesh path on its own two-node lab (or on --lab, left up): the C server on
node2 (port 80 observed, port 8081 listed in `nodemesh.io/opaque-ports`: relayed over mTLS
without HTTP parsing), a client pod on node1, the C load generator over 32 keep-alive
connections at --rate. Both agents' CPU (utime and stime of their process trees, from /proc)
is read around each run and divided by the requests the run scheduled (warm-up included, as
`make bench` counts): microseconds of agent CPU per request, both agents together, so 764 us
per request is `make bench`'s "0.764 vCPU per 1000 rps". The agents' idle CPU (measured for
IDLE_SECONDS before each variant's runs) is printed too; the figures are not net of it.

Variants: the agents run this checkout's code (`tree`) and, for each `--variant NAME=GITREF`,
that revision's `nodeagent/` (exported under .bench-variants/ in this checkout and put first on
the agents' PYTHONPATH through their DaemonSet: the agents restart for every switch);
`NAME=dir:PATH` takes PATH/nodeagent as it is (e.g. a tree with compiled modules). Every round
runs each variant once, in alternating order, and in each variant the observed and the opaque
port one after the other. Reported: each run's figures with the load average, then per
variant and port the median over the rounds (min-max). `--profile DIR`: after the rounds, one
py-spy recording per variant and port of both agents (raw folded stacks, not timed runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.meshbench import labctl, manifests, native, procstat, workloads  # noqa: E402
from bench.meshbench.workloads import Target  # noqa: E402
from nodemesh.cli.lab_mesh import agent_container, mesh_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS_DIR = REPO / ".bench-variants"  # under the checkout: the lab's containers hide /tmp
NS = manifests.NAMESPACES["nodemesh"]
PORTS = {"observed": manifests.HTTP_PORT, "opaque": manifests.OPAQUE_PORT}
IDLE_SECONDS = 4.0
WARMUP = 1.0
# A run whose median latency is above this fell behind (the agents, or the load generator,
# starved by other work on the machine): its requests were coalesced and cost less CPU each,
# so it is run again (up to RETRIES times) and, if it never comes out valid, left out.
VALID_P50_MS = 2.0
RETRIES = 2


def export(name: str, ref: str) -> Path:
    """`ref`'s nodeagent/ package, in a directory of its own."""
    where = VARIANTS_DIR / name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    if ref.startswith("dir:"):  # a prepared tree (e.g. with compiled modules): its nodeagent/
        shutil.copytree(Path(ref[4:]) / "nodeagent", where / "nodeagent")
        return where
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "nodeagent"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes' trees."""
    user = system = 0
    for pid in procstat.tree(pids):
        fields = procstat._stat_fields(pid)
        if fields:
            user += int(fields[11])
            system += int(fields[12])
    return user / procstat.TICKS, system / procstat.TICKS


def set_variant(lab: labctl.Lab, path: Path | None) -> list[int]:
    """Re-apply the agents' DaemonSet with `path` first on PYTHONPATH (None: this checkout)
    and wait for the new agents; their PIDs."""

    def change(ds: dict[str, Any]) -> None:
        agent = agent_container(ds)
        env = [e for e in agent.get("env", []) if e["name"] != "PYTHONPATH"]
        if path is not None:
            env.append({"name": "PYTHONPATH", "value": str(path)})
        agent["env"] = env

    before = lab.agent_pids()
    lab.apply(mesh_manifest(lab.paths, change_daemonset=change))
    deadline = time.monotonic() + 300
    now: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            now = lab.agent_pids()
        except Exception:  # noqa: BLE001 - the ledger between two agents
            now = {}
        changed = set(now.values()).isdisjoint(before.values())
        if len(now) == len(before) and (changed or _runs(now, path)):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"agents did not restart for {path}")
    for pid in now.values():
        assert _runs({"": pid}, path), (pid, path)
    time.sleep(4)  # tables, certificates, listeners
    return list(now.values())


def _runs(agents: dict[str, int], path: Path | None) -> bool:
    for pid in agents.values():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        has = [e for e in env if e.startswith(b"PYTHONPATH=")]
        if (path is None and has) or (path is not None and has != [f"PYTHONPATH={path}".encode()]):
            return False
    return True


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def measure(
    agents: list[int], target: Target, loadgen: Path, *, port: int, rate: float, seconds: float
) -> dict[str, Any]:
    u0, s0 = cpu_split(agents)
    res = workloads.http(
        target, loadgen=loadgen, port=port, rate=rate, duration=seconds, warmup=WARMUP, conns=32
    )
    u1, s1 = cpu_split(agents)
    requests = rate * (seconds + WARMUP)
    return {
        "us_per_req": (u1 - u0 + s1 - s0) / requests * 1e6,
        "user_us": (u1 - u0) / requests * 1e6,
        "sys_us": (s1 - s0) / requests * 1e6,
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "errors": res["errors"],
        "completed": res["completed"],
        "load": loadavg(),
        "valid": res["p50_ms"] is not None and res["p50_ms"] <= VALID_P50_MS and not res["errors"],
    }


def idle_rate(agents: list[int]) -> float:
    u0, s0 = cpu_split(agents)
    time.sleep(IDLE_SECONDS)
    u1, s1 = cpu_split(agents)
    return (u1 - u0 + s1 - s0) / IDLE_SECONDS


def profile(
    agents: list[int],
    target: Target,
    loadgen: Path,
    *,
    port: int,
    rate: float,
    seconds: float,
    out: Path,
) -> None:
    pyspy = Path(sys.executable).parent / "py-spy"
    procs = [
        subprocess.Popen(
            [
                str(pyspy),
                "record",
                "-r",
                "200",
                "-f",
                "raw",
                "-d",
                str(int(seconds)),
                "-p",
                str(pid),
                "-o",
                str(out.with_suffix(f".{i}.txt")),
                "--nonblocking",
                "--subprocesses",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, pid in enumerate(agents)
    ]
    try:
        workloads.http(
            target, loadgen=loadgen, port=port, rate=rate, duration=seconds, warmup=WARMUP, conns=32
        )
    finally:
        for p in procs:
            p.wait(timeout=seconds + 60)


_RUN = re.compile(r"round (\d+) (\S+)\s+(\w+)\s+([\d.]+) us/req")


def combine(files: list[Path]) -> list[str]:
    """Several reports' valid runs as one table: per port, each variant's median (min-max) and
    the difference to the first --variant's run of the same round (tree - other)."""
    runs: dict[tuple[str, int, str], dict[str, float]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            m = _RUN.match(line)
            if m and "INVALID" not in line:
                runs.setdefault((str(f), int(m[1]), m[3]), {})[m[2]] = float(m[4])
    names = sorted({n for v in runs.values() for n in v} - {"tree"})
    out = [
        "| port | variant | median (min-max) us | tree - variant, same round: median (min-max) "
        "| rounds |",
        "|---|---|---|---|---|",
    ]
    for port in PORTS:
        for name in ["tree", *names]:
            got = [v[name] for k, v in runs.items() if k[2] == port and name in v]
            if not got:
                continue
            diff = [
                v["tree"] - v[name]
                for k, v in runs.items()
                if k[2] == port and name in v and "tree" in v and name != "tree"
            ]
            spread = (
                f"{statistics.median(diff):+.0f} ({min(diff):+.0f}..{max(diff):+.0f})"
                if diff
                else "-"
            )
            out.append(
                f"| {port} | {name} | {statistics.median(got):.0f} ({min(got):.0f}-"
                f"{max(got):.0f}) | {spread} | {len(got)} |"
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", help="a running lab to use (left up)")
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=GITREF|dir:PATH")
    p.add_argument("--out", type=Path, help="also write the report here")
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy recordings here")
    p.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="REPORT",
        help="only print the valid runs of these reports (--out files) as one table",
    )
    args = p.parse_args()
    if args.combine:
        print("\n".join(combine(args.combine)))
        return
    if os.geteuid() != 0:
        sys.exit("dp_cpu: run as root (it builds a lab)")
    variants: dict[str, Path | None] = {"tree": None}
    for spec in args.variant:
        name, ref = spec.split("=", 1)
        variants[name] = export(name, ref)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    lab = labctl.Lab(args.lab or "cpu" + uuid.uuid4().hex[:5])
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    say(
        f"# dp_cpu: rate {args.rate:g} rps, {args.seconds:g} s (+{WARMUP:g} s warm-up) per run, "
        f"32 keep-alive connections, {args.rounds} rounds; load average at start {loadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="nodemesh-cpu-") as work:
        bins = native.build(Path(work))
        try:
            if not args.lab:
                lab.up()
            objects = manifests.path_objects(
                "nodemesh",
                bins=manifests.Binaries(
                    http_server=bins["server"],
                    grpc_script=REPO / "bench" / "meshbench" / "grpc_echo.py",
                ),
                client_node="node1",
                server_node="node2",
                haproxy_dir=None,
                files=Path(work),
            )
            lab.apply(manifests.render(objects))
            client = lab.pod(NS, "client")
            target = Target(lab.pod_netns(client), lab.service_ip(NS, manifests.SERVICE))
            names = list(variants)
            for rnd in range(args.rounds):
                order = names if rnd % 2 == 0 else names[::-1]
                for name in order:
                    agents = set_variant(lab, variants[name])
                    idle = idle_rate(agents)
                    for label, port in PORTS.items():
                        for _ in range(1 + RETRIES):
                            r = measure(
                                agents,
                                target,
                                bins["loadgen"],
                                port=port,
                                rate=args.rate,
                                seconds=args.seconds,
                            )
                            r["idle_cpu"] = idle
                            say(
                                f"round {rnd + 1} {name:8s} {label:8s} {r['us_per_req']:6.1f} "
                                f"us/req (user {r['user_us']:5.1f}, sys {r['sys_us']:5.1f}); idle "
                                f"{idle * 1000:4.1f} ms/s; p50 {r['p50_ms']} ms p99 {r['p99_ms']} "
                                f"ms; answered {r['completed']}, errors {r['errors']}; load "
                                f"{r['load']}{'' if r['valid'] else '; INVALID (fell behind)'}"
                            )
                            if r["valid"]:
                                results.setdefault((name, label), []).append(r)
                                break
            say("")
            say(
                "| variant | port | us agent CPU per request, both agents: median (min-max) "
                "| user | sys | p50 ms | p99 ms | valid runs |"
            )
            say("|---|---|---|---|---|---|---|---|")
            for (name, label), runs in results.items():

                def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                    return float(statistics.median(r[key] for r in runs))

                tot = [r["us_per_req"] for r in runs]
                say(
                    f"| {name} | {label} | {med('us_per_req'):.0f} ({min(tot):.0f}-{max(tot):.0f}) "
                    f"| {med('user_us'):.0f} | {med('sys_us'):.0f} | {med('p50_ms'):.3f} "
                    f"| {med('p99_ms'):.2f} | {len(runs)} |"
                )
            say(f"\nload average at end {loadavg()}")
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for name, path in variants.items():
                    agents = set_variant(lab, path)
                    for label, port in PORTS.items():
                        profile(
                            agents,
                            target,
                            bins["loadgen"],
                            port=port,
                            rate=args.rate,
                            seconds=args.seconds,
                            out=args.profile / f"{name}-{label}",
                        )
            if len(variants) > 1:
                set_variant(lab, None)
        finally:
            if not args.lab:
                lab.down()
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text("\n".join(lines) + "\n")
            shutil.rmtree(VARIANTS_DIR, ignore_errors=True)


if __name__ == "__main__":
    main()
