"""`make bench`: direct vs nodemesh vs a HAProxy mTLS pair on a two-node lab, results to files.

    .venv/bin/python -m bench.meshbench [--out bench/results] [--smoke] [--lab NAME | --name NAME]
    .venv/bin/python -m bench.meshbench --l7-only [--out bench/results]

`--l7-only`: only direct, nodemesh-l7 and haproxy-http (the HTTP rates and the new-connection
run), written to <out>/l7only-<date>-<commit>.json and .md (latest.* are left alone).

Run as root from the repository root. Without --lab it brings up its own lab and always takes
it down again. Writes <out>/bench-<date>-<commit>.json and .md, and copies them to
<out>/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.meshbench import report
from bench.meshbench.labctl import Lab
from bench.meshbench.plan import FULL, SMOKE
from bench.meshbench.run import run, run_l7

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("meshbench")


def _git(*args: str) -> str:
    res = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def write(res: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = res["date"].replace(":", "").replace("-", "")[:15]
    base = out / f"bench-{stamp}-{res['commit'][:8] or 'nogit'}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    base.with_suffix(".md").write_text(report.markdown(res))
    shutil.copyfile(base.with_suffix(".json"), out / "latest.json")
    shutil.copyfile(base.with_suffix(".md"), out / "latest.md")
    return base.with_suffix(".json")


def write_l7(res: dict[str, Any], out: Path) -> str:
    """The --l7-only run's files; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = res["date"].replace(":", "").replace("-", "")[:15]
    base = out / f"l7only-{stamp}-{res['commit'][:8] or 'nogit'}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    m = res["machine"]
    lines = [
        f"# L7 paths only ({res['date']}, commit {res['commit'][:8]}"
        f"{' + changes' if res['dirty'] else ''})", "",
        f"{m['nproc']} cores, {m['cpu_model']}; load average {m['loadavg_start']} -> "
        f"{m['loadavg_end']}; {res['elapsed_s']} s. Turns whose load generator lagged or whose "
        "direct run was noisy are marked (lag p99 per turn); latency figures from such a run "
        "are not a verdict.", "",
        "| workload | path | p50 ms | p99 ms | achieved rps | errors | proxy CPU s / 1000 req "
        "| turns' lag p99 ms |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for path, cells in res["paths"].items():
        rows = [(f"HTTP keep-alive {r} rps", c) for r, c in cells.get("http", {}).items()]
        if "newconn" in cells:
            rows.append((f"new connection each {res['plan']['newconn_rate']} rps",
                         cells["newconn"]))  # fmt: skip
        for name, c in rows:
            if "failed" in c:
                lines.append(f"| {name} | {path} | failed: {c['failed'][:80]} |")
                continue
            cpu = c.get("proxy_cpu", {}).get("s_per_1000_requests")
            lags = ", ".join(str(t["lag_p99_ms"]) for t in c.get("turns", []))
            lines.append(f"| {name} | {path} | {c['p50_ms']} | {c['p99_ms']} | "
                         f"{c['achieved_rps']} | {c['errors']} | {cpu if cpu is not None else '-'} "
                         f"| {lags} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    base.with_suffix(".md").write_text(text)
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--smoke", action="store_true", help="seconds, tiny rates: checks the harness")
    p.add_argument("--lab", help="use this running lab instead of making one (it is left up)")
    p.add_argument("--name", help="name of the lab the run makes (default: bench + random)")
    p.add_argument("--l7-only", action="store_true", help="the L7 paths only (see above)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces, iptables)", file=sys.stderr)
        return 1
    plan = SMOKE if args.smoke else FULL
    started = time.monotonic()
    res: dict[str, Any] = {
        "schema": 1,
        "kind": "smoke" if args.smoke else "full",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
    }
    lab = Lab(args.lab or args.name or "bench" + secrets.token_hex(3))
    workdir = Path(tempfile.mkdtemp(prefix="nodemesh-bench-"))
    try:
        if not args.lab:
            log.info("bringing up lab %s", lab.name)
            lab.up()
        res.update((run_l7 if args.l7_only else run)(lab, plan, workdir=workdir))
    finally:
        if not args.lab:
            log.info("taking lab %s down", lab.name)
            lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    res["machine"]["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.l7_only:
        print(write_l7(res, args.out))
        return 0
    res["targets"] = report.targets(res)
    path = write(res, args.out)
    print(report.markdown(res))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
