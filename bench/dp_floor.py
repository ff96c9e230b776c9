"""Where the agents' CPU goes: the same keep-alive load with HTTP observation and without it.

    sudo .venv/bin/python bench/dp_floor.py [--lab NAME] [--rate 1000] [--seconds 12] [--runs 2]

Deploys `make bench`'s nodemesh path (C server on node2, client pod on node1, both meshed) on
its own two-node lab (or on --lab, left up), drives it with the C load generator over 32
keep-alive connections, and reads both agents' CPU from /proc. Then it marks the ports opaque
(`nodemesh.io/opaque-ports` on the namespace), so the agents relay with mTLS but no longer
parse HTTP, and measures again. The difference is what HTTP/1 observation costs; the opaque
figure is the relay + TLS floor. Prints per run: p50/p99 and CPU ms per request, both agents.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.meshbench import labctl, manifests, native, workloads  # noqa: E402
from bench.meshbench.workloads import Target  # noqa: E402

NS = manifests.NAMESPACES["nodemesh"]
OPAQUE = f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
  labels: {{nodemesh.io/mesh: enabled}}
  annotations: {{nodemesh.io/opaque-ports: "{manifests.HTTP_PORT},8080"}}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(lab: labctl.Lab, target: Target, loadgen: Path, rate: float, seconds: float) -> str:
    agents = lab.agent_pids()
    before = {n: cpu_seconds(p) for n, p in agents.items()}
    res = workloads.http(target, loadgen=loadgen, port=manifests.HTTP_PORT, rate=rate,
                         duration=seconds, warmup=1.0, conns=32)  # fmt: skip
    used = sum(cpu_seconds(p) - before[n] for n, p in agents.items())
    per_request = used / (rate * (seconds + 1.0)) * 1000
    return (f"p50 {res['p50_ms']:.3f} ms, p99 {res['p99_ms']:.2f} ms, errors {res['errors']}; "
            f"agents' CPU {per_request:.3f} ms per request (both)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", help="a running lab to use (left up)")
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=12)
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("dp_floor: run as root (it builds a lab)")
    lab = labctl.Lab(args.lab or "floor" + uuid.uuid4().hex[:5])
    with tempfile.TemporaryDirectory(prefix="nodemesh-floor-") as work:
        bins = native.build(Path(work))
        try:
            if not args.lab:
                lab.up()
            objects = manifests.path_objects(
                "nodemesh",
                bins=manifests.Binaries(
                    http_server=bins["server"],
                    grpc_script=Path(__file__).resolve().parent / "meshbench" / "grpc_echo.py",
                ),
                client_node="node1", server_node="node2", haproxy_dir=None, files=Path(work),
            )  # fmt: skip
            lab.apply(manifests.render(objects))
            client = lab.pod(NS, "client")
            target = Target(lab.pod_netns(client), lab.service_ip(NS, manifests.SERVICE))
            for label, setup in (("HTTP observed", None), ("opaque (no HTTP parsing)", OPAQUE)):
                if setup is not None:
                    lab.apply(setup)
                    time.sleep(3)  # the agents learn the setting from the control plane
                for _ in range(args.runs):
                    figures = measure(lab, target, bins["loadgen"], args.rate, args.seconds)
                    print(f"{label:26s} {figures}", flush=True)
        finally:
            if not args.lab:
                lab.down()


if __name__ == "__main__":
    main()
