"""The node agent's memory on a lab, phase by phase: idle, 100 idle pods enrolled, under load,
after load, after churn, after the pods left.

    .venv/bin/python -m bench.agent_memory [--pods 100] [--churn 3] [--name LAB] [--out DIR]
        [--reports DIR] [--skip-load]

It brings up a 2-node lab (`nodemesh lab up`: the agent runs as the DaemonSet says, i.e.
`nodemesh-agent --keep-sockets ...` with the manifest's env, so a socket keeper (PID 1 of the
container) and the agent (its child) form one "process set"), deploys the benchmark's `nodemesh`
path (client pod on node1, server pod on node2), and measures node1's agent process set.

How memory is counted, per process of the set and summed over the set:
- RSS: VmRSS (resident pages, shared library and interpreter text counted in full in each
  process: the keeper and the agent both count the python binary and libcrypto);
- PSS: smaps_rollup Pss (shared pages split between the processes mapping them: the sum over
  the set counts a page the keeper and the agent share once; this is the set's real share);
- USS: Private_Clean + Private_Dirty (only this process's own pages).
- RSS, shared once: anonymous pages summed, each file page the keeper and the agent both map
  counted once (see resident_once); unlike PSS it does not fall when other processes on the
  machine (the other node's agent, other labs) map the same libraries. The <= 60 MB target of
  issue 17 is read against this figure.
Phases: idle (path deployed, no idle pods), with N idle pods (sleep) enrolled on node1, the
peak while each load runs with the N pods enrolled (sampled every 0.2 s: HTTP/1 keep-alive at
300 rps over 32 connections, then 50 new connections/s, client on node1 through both agents;
rates the agents keep up with on a loaded 2-core machine: at 1000 rps and load ~10 they fell
seconds behind and the figure measured their backlog),
5 s and 20 s after the load, after each churn cycle (the N pods' Deployment deleted, N new pods
enrolled), after the pods left. Load averages are written with every phase. A phase with pods
arriving or leaving is measured once the agent's state file holds exactly the pods the lab
lists (and 5 s more): the lab lists a pod as gone before its CNI DEL has reached the agent,
and without the wait a churn figure counted the previous cycle's pods too. --reports adds the
agent's own memory report (SIGUSR1: glibc, pymalloc, object counts) after every phase.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.meshbench import manifests, native, procstat, workloads  # noqa: E402
from bench.meshbench.labctl import Lab  # noqa: E402
from bench.meshbench.manifests import HTTP_PORT, NAMESPACES  # noqa: E402
from bench.meshbench.workloads import Target  # noqa: E402

log = logging.getLogger("agent_memory")
CLIENT_NODE, SERVER_NODE = "node1", "node2"
KB = 1024


def _role(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    return "keeper" if "handover.keeper" in words else "agent" if "agent" in words else "other"


def process_memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of one process, in MiB."""
    out = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        key, _, rest = line.partition(":")
        kb = int(rest.split()[0])
        if key == "Rss":
            out["rss"] += kb / KB
        elif key == "Pss":
            out["pss"] += kb / KB
        elif key in ("Private_Clean", "Private_Dirty"):
            out["uss"] += kb / KB
    return {k: round(v, 2) for k, v in out.items()}


def resident_once(pids: list[int]) -> float:
    """The set's resident memory with a file page both processes map counted once: anonymous
    mappings summed, each file mapping (path, offset) at its largest Rss in any process of the
    set. Unlike PSS it does not fall when processes outside the set map the same libraries."""
    anon = 0
    files: dict[tuple[str, str], int] = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        key: tuple[str, str] | None = None
        for line in text.splitlines():
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                path = head[5] if len(head) > 5 else ""
                key = (path, head[2]) if path.startswith("/") else None
            elif head[0] == "Rss:":
                kb = int(head[1])
                if key is None:
                    anon += kb
                else:
                    files[key] = max(files.get(key, 0), kb)
    return round((anon + sum(files.values())) / KB, 2)


def anon_parts(pid: int) -> dict[str, float]:
    """Where a process's anonymous resident memory is, in MiB: glibc's main heap ([heap]) and
    the other anonymous mappings (pymalloc's 1 MiB arenas, glibc's other arenas and mmapped
    large blocks, thread stacks; the kernel merges adjacent ones, so their sizes cannot tell
    them apart)."""
    out = {"heap": 0.0, "other_anon": 0.0}
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    part: str | None = None
    for line in text.splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            part = "heap" if path == "[heap]" else "other_anon" if not path else None
        elif head[0] == "Rss:" and part is not None:
            out[part] += int(head[1]) / KB
    return {k: round(v, 2) for k, v in out.items()}


def set_memory(root: int) -> dict[str, Any]:
    pids = sorted(procstat.tree([root]))
    procs = {f"{_role(p)}-{p}": process_memory(p) for p in pids}
    total = {k: round(sum(m[k] for m in procs.values()), 2) for k in ("rss", "pss", "uss")}
    total["rss_once"] = resident_once(pids)
    agent = next((p for p in pids if _role(p) == "agent"), None)
    parts = anon_parts(agent) if agent is not None else {}
    return {"processes": procs, "set": total, "agent_anon": parts, "loadavg": _loadavg()}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Peak(threading.Thread):
    """The highest set RSS and PSS seen while a phase runs."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True, name="peak")
        self.root, self.stop_event = root, threading.Event()
        self.peak = {"rss": 0.0, "pss": 0.0, "uss": 0.0, "rss_once": 0.0}
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            now = set_memory(self.root)["set"]
            self.samples += 1
            self.peak = {k: max(self.peak[k], now[k]) for k in self.peak}

    def __enter__(self) -> Peak:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.join(5)


def _agent_pid(root: int) -> int | None:
    return next((p for p in sorted(procstat.tree([root])) if _role(p) == "agent"), None)


def memory_report(root: int, dest: Path, name: str) -> dict[str, Any]:
    """SIGUSR1 to the agent (nodeagent.heap.MemoryReport without tracemalloc: glibc's main
    arena, pymalloc's arenas, object counts after a gc pass, the pods' listener sets alive),
    the report copied from the container's /tmp to `dest/name`; returns its figures."""
    pid = _agent_pid(root)
    if pid is None:
        return {}
    tmp = Path(f"/proc/{pid}/root/tmp")
    before = {p: p.stat().st_mtime for p in tmp.glob("nodemesh-agent-memory-*.txt")}
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        for path in tmp.glob("nodemesh-agent-memory-*.txt"):
            if before.get(path) != path.stat().st_mtime:
                time.sleep(0.5)  # written in one call, but let it finish
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest / name)
                return report_figures((dest / name).read_text())
        time.sleep(0.2)
    log.warning("no memory report from pid %d", pid)
    return {}


def report_figures(text: str) -> dict[str, Any]:
    """The figures of a memory report, in MiB (listeners: a count)."""
    found: dict[str, Any] = {}
    if m := re.search(r"glibc heap: in_use (\d+) kB, free (\d+) kB, mmapped (\d+) kB", text):
        found |= {k: round(int(v) / KB, 2) for k, v in zip(
            ("glibc_in_use", "glibc_free", "glibc_mmapped"), m.groups(), strict=True)}  # fmt: skip
    if m := re.search(r"pymalloc: (\d+) arenas.*live objects (\d+) kB.*pools (\d+) kB", text):
        arenas, live, free = (int(v) for v in m.groups())
        found |= {"pymalloc_arenas": arenas, "pymalloc_live": round(live / KB, 2),
                  "pymalloc_free": round(arenas - live / KB, 2)}  # fmt: skip
    if m := re.search(r"pod listeners alive: (\d+)", text):
        found["listeners"] = int(m.group(1))
    return found


def wait_enrolled(lab: Lab, count: int, timeout: float = 180.0) -> float:
    """Wait until the agent's state file holds `count` pods of the idle namespace (the lab
    lists a pod as gone before its CNI DEL has reached the agent: measured earlier, the agent
    still had the last cycle's pods too). Returns the seconds waited."""
    path = lab.paths.run_dir(CLIENT_NODE) / "agent-state.json"
    t0 = time.monotonic()
    while True:
        try:
            records = json.loads(path.read_text())["pods"]
            now = sum(r["namespace"] == manifests.IDLE_NAMESPACE for r in records)
        except (OSError, ValueError, KeyError):
            now = -1
        if now == count:
            return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > timeout:
            log.warning("the agent has %d idle pods, not %d, after %.0f s", now, count, timeout)
            return -1.0
        time.sleep(1.0)


def measure(lab: Lab, out: dict[str, Any], *, pods: int, churn: int, workdir: Path,
            reports: Path | None = None, load: bool = True) -> None:  # fmt: skip
    """Fills `out` phase by phase (a failure part way leaves what was measured). With `reports`,
    the agent's memory report (SIGUSR1: no tracemalloc) is taken after each phase is measured
    and copied there, its figures added to the phase (its gc pass frees cyclic garbage the
    next phase would otherwise have counted)."""
    bins = native.build(workdir / "bin")
    b = manifests.Binaries(
        http_server=bins["server"], grpc_script=REPO / "bench" / "meshbench" / "grpc_echo.py"
    )
    objects = manifests.path_objects(
        "nodemesh", bins=b, client_node=CLIENT_NODE, server_node=SERVER_NODE, haproxy_dir=None,
        files=workdir,
    )  # fmt: skip
    lab.apply(manifests.render(objects), timeout=240)
    ns = NAMESPACES["nodemesh"]
    target = Target(lab.pod_netns(lab.pod(ns, "client")), lab.service_ip(ns, manifests.SERVICE))
    root = lab.agent_pids()[CLIENT_NODE]
    phases = out["phases"]

    def phase(name: str, idle_pods: int | None = None) -> None:
        waited = wait_enrolled(lab, idle_pods) if idle_pods is not None else None
        if waited:
            time.sleep(5.0)  # the agent trims its heap 2 s after the last pod left
        phases[name] = set_memory(root)
        if waited is not None:
            phases[name]["waited_for_agent_s"] = waited
        if reports is not None:
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            phases[name]["report"] = memory_report(root, reports, f"{len(phases):02d}-{slug}.txt")
        log.info("%s: %s %s", name, phases[name]["set"], phases[name].get("report", ""))

    def http(rate: float, seconds: float, *, newconn: bool = False) -> dict[str, Any]:
        s = workloads.http(target, loadgen=bins["loadgen"], port=HTTP_PORT, rate=rate,
                           duration=seconds, warmup=1.0, conns=32, newconn=newconn)  # fmt: skip
        keep = ("answered", "errors", "p50_ms", "p99_ms")
        return {"rate": rate, "newconn": newconn, **{k: s.get(k) for k in keep}}

    # A short warm-up: the first requests' lazy imports and caches belong to "idle".
    out["warmup"] = http(200, 2.0)
    time.sleep(3.0)
    phase("idle")

    idle_text = manifests.render(manifests.idle_objects(replicas=pods, node=CLIENT_NODE))
    lab.apply(idle_text, timeout=400)
    time.sleep(5.0)
    phase(f"with {pods} idle pods", pods)

    out["load"] = []
    loads = (("keep-alive 300 rps", 300, 20.0, False), ("50 new connections/s", 50, 10.0, True))
    for name, rate, seconds, newconn in loads if load else ():
        with Peak(root) as peak:
            out["load"].append(http(rate, seconds, newconn=newconn))
        phases[f"peak under load: {name}"] = {"set": peak.peak, "samples": peak.samples,
                                              "loadavg": _loadavg()}  # fmt: skip
        log.info("peak %s: %s", name, peak.peak)
    # The agent checks its heap every 5 s (nodeagent.agent BURST_CHECK_INTERVAL).
    time.sleep(5.0)
    phases["5 s after load"] = set_memory(root)
    time.sleep(15.0)
    phase("20 s after load")

    # Churn replaces the Deployment's pods; the namespace stays (deleting it too left pods
    # Pending in the lab when the next apply came while it was still terminating).
    pods_only = manifests.render(
        [o for o in manifests.idle_objects(replicas=pods, node=CLIENT_NODE)
         if o["kind"] != "Namespace"]
    )  # fmt: skip
    for cycle in range(1, churn + 1):
        lab.delete(pods_only, namespace=manifests.IDLE_NAMESPACE, timeout=400)
        lab.apply(pods_only, timeout=400)
        time.sleep(5.0)
        phase(f"after churn {cycle} ({pods} left, {pods} new)", pods)
    lab.delete(idle_text, namespace=manifests.IDLE_NAMESPACE, timeout=400)
    time.sleep(5.0)
    phase("after the pods left", 0)
    out["agent_env"] = _env(root)


def _env(root: int) -> dict[str, str]:
    """The keeper's environment as the container got it (only what changes memory)."""
    try:
        raw = Path(f"/proc/{root}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    return {k: v for k, v in env.items() if k.startswith(("MALLOC", "PYTHON"))}


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# Agent memory, {res['pods']} idle pods, {res['churn']} churn cycles",
        "",
        f"- date {res['date']}; commit `{res['commit']}`; label: {res['label']}",
        f"- agent env (MALLOC*/PYTHON*): {res.get('agent_env')}",
        "- counted: node1's agent process set (the socket keeper, PID 1 of the container, and"
        " the agent, its child); RSS = sum of VmRSS (shared pages counted in each process), PSS"
        " = sum of Pss (shared pages split: the set's real share), USS = private pages only",
        "",
        "| phase | set RSS, shared once | set RSS sum | set PSS | set USS | keeper RSS/PSS"
        " | agent RSS/PSS | agent [heap] / other anon | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ph in res["phases"].items():
        procs = ph.get("processes", {})
        keeper = next((m for k, m in procs.items() if k.startswith("keeper")), None)
        agent = next((m for k, m in procs.items() if k.startswith("agent")), None)
        s = ph["set"]
        k = f"{keeper['rss']:.1f}/{keeper['pss']:.1f}" if keeper else "-"
        a = f"{agent['rss']:.1f}/{agent['pss']:.1f}" if agent else "-"
        parts = ph.get("agent_anon") or {}
        anon = f"{parts['heap']:.1f} / {parts['other_anon']:.1f}" if parts else "-"
        lines.append(
            f"| {name} | {s['rss_once']:.1f} | {s['rss']:.1f} | {s['pss']:.1f} | {s['uss']:.1f}"
            f" | {k} | {a} | {anon} | {ph['loadavg']} |"
        )
    reported = {n: ph for n, ph in res["phases"].items() if ph.get("report")}
    if reported:
        lines += [
            "",
            "The agent's own report (SIGUSR1, after each phase was measured; MiB): glibc's main"
            " arena (in use, free but kept), pymalloc (1 MiB arenas, live objects in them, the"
            " rest of the arenas free), pod listener sets alive, seconds waited for the agent"
            " to hold exactly the pods the lab lists",
            "",
            "| phase | glibc in use / free | pymalloc arenas / live / free | listeners | waited |",
            "|---|---|---|---|---|",
        ]
        for name, ph in reported.items():
            r = ph["report"]
            lines.append(
                f"| {name} | {r.get('glibc_in_use', '-')} / {r.get('glibc_free', '-')}"
                f" | {r.get('pymalloc_arenas', '-')} / {r.get('pymalloc_live', '-')}"
                f" / {r.get('pymalloc_free', '-')} | {r.get('listeners', '-')}"
                f" | {ph.get('waited_for_agent_s', '-')} |"
            )
    if "failed" in res:
        lines += ["", f"**The run failed part way**: {res['failed'][:500]}"]
    lines += ["", "Load: " + "; ".join(
        f"{'new conn' if r['newconn'] else 'keep-alive'} {r['rate']} rps: answered {r['answered']},"
        f" errors {r['errors']}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms" for r in res["load"]
    )]  # fmt: skip
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pods", type=int, default=100)
    p.add_argument("--churn", type=int, default=3)
    p.add_argument("--name", help="lab name (default: mem + random)")
    p.add_argument("--label", default="", help="a word for the results' file name (before/after)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "agent-memory")
    p.add_argument(
        "--reports",
        type=Path,
        help="copy the agent's memory reports (SIGUSR1: glibc, pymalloc, objects) here after"
        " each phase; their figures go into the results",
    )
    p.add_argument("--skip-load", action="store_true", help="no load phases (churn only)")
    args = p.parse_args()
    # SIGTERM (a background job ignores SIGINT) takes the lab down too.
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 1
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    stamp = datetime.datetime.now(datetime.UTC)
    res: dict[str, Any] = {"date": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit,
                           "label": args.label, "pods": args.pods, "churn": args.churn,
                           "loadavg_start": _loadavg()}  # fmt: skip
    lab = Lab(args.name or "mem" + secrets.token_hex(2))
    workdir = Path(tempfile.mkdtemp(prefix="nodemesh-mem-"))
    res["phases"], res["load"] = {}, []
    try:
        log.info("bringing up lab %s", lab.name)
        lab.up()
        measure(lab, res, pods=args.pods, churn=args.churn, workdir=workdir,
                reports=args.reports, load=not args.skip_load)  # fmt: skip
    except (Exception, KeyboardInterrupt) as exc:  # what was measured so far is still written
        log.exception("run failed")
        res["failed"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
    finally:
        log.info("taking lab %s down", lab.name)
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    res["loadavg_end"] = _loadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"{args.label or 'run'}-{stamp.strftime('%Y%m%dT%H%M%S')}-{commit}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    base.with_suffix(".md").write_text(text)
    print(text)
    return 1 if "failed" in res else 0


if __name__ == "__main__":
    sys.exit(main())
