"""The L7 HTTP/1 path alone: its CPU per request on loopback, without a lab, a tunnel or a relay.

The agent's `serve` (nodeagent/proxy/l7/http1.py) runs in this process with one route (a
timeout and a retry rule, as bench.l7_paths' `routed`) to an nginx on loopback; hey sends
keep-alive requests at a fixed rate. The figure is this process's user+system CPU seconds per
1000 requests answered (nginx and hey are other processes), with the load average around the
run. Appended to bench/results/l7_h1_loopback.md.

    .venv/bin/python -m bench.l7_h1_loopback [--rate 1000] [--seconds 10] [--rounds 3] [--label x]
        [--loop uvloop|asyncio]

The loop is uvloop's, as in the agent, unless --loop asyncio (figures before 2026-12-04 were
taken on asyncio's own loop, which reads ~10-20% higher).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.l7_paths import commit, loadavg
from nodeagent.proxy.l7.balancing import RequestBalancer
from nodeagent.proxy.l7.http1 import RouteContext, Upstreams, serve
from nodemesh.model import ServiceKey
from nodemesh.routing.spec import compile_route
from nodemesh.routing.table import RouteTable

WEB = ServiceKey("t", "web")


class Target:
    def __init__(self, port: int) -> None:
        self.ip, self.port = "127.0.0.1", port

    @property
    def key(self) -> tuple[str, int]:
        return self.ip, self.port


def nginx(work: Path) -> tuple[subprocess.Popen, int]:
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / d).mkdir(parents=True, exist_ok=True)
    port = 18000 + os.getpid() % 1000
    (work / "nginx.conf").write_text(
        f"daemon off; master_process off; pid {work}/nginx.pid; error_log {work}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; client_body_temp_path {work}/body; "
        f"proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi; "
        f"uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;\n"
        f'  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}\n'
        "}\n"
    )
    proc = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)])
    time.sleep(0.5)
    return proc, port


def run_hey(url: str, *, seconds: float, rate: int) -> tuple[int, float, float]:
    """hey at `rate` over 4 keep-alive connections for `seconds`: (answers 200, this process's
    user and system CPU per answer in microseconds)."""
    t0 = os.times()
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", "4", "-q", str(rate // 4), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    t1 = os.times()
    done = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", out))
    return done, (t1.user - t0.user) / done * 1e6, (t1.system - t0.system) / done * 1e6


def routed(port: int) -> RouteContext:
    """The L7 path's context for Service t/web with one route (a request timeout and a retry
    rule, as bench.l7_paths' `routed`) to the nginx on loopback `port`."""
    table = RouteTable()
    table.replace([compile_route({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "t"},
        "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "web"}],
                 "rules": [{"backendRefs": [{"name": "web"}], "timeouts": {"request": "5s"},
                            "retry": {"codes": [503], "attempts": 2}}]},
    })])  # fmt: skip
    return RouteContext(
        routes=table,
        upstreams=Upstreams(
            targets=lambda svc, p: [Target(port)],
            connect=lambda t: asyncio.open_connection(t.ip, t.port),
            balancer=RequestBalancer(),
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--label", default="run")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "l7_h1_loopback.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = nginx(Path(tmp))
        ctx = routed(port)
        if args.loop == "uvloop":  # as the agent runs (nodeagent/main.py)
            import uvloop

            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        ready = threading.Event()
        listen: list[int] = []

        async def start() -> None:
            server = await asyncio.start_server(
                lambda r, w: serve(ctx, r, w, service=WEB, port=80), "127.0.0.1", 0
            )
            listen.append(server.sockets[0].getsockname()[1])
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(start())
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)
        url = f"http://127.0.0.1:{listen[0]}/"
        try:
            subprocess.run(["hey", "-n", "500", "-c", "4", url], capture_output=True, check=True)
            before = loadavg()
            per_1000 = []
            for _ in range(args.rounds):
                _, user, system = run_hey(url, seconds=args.seconds, rate=args.rate)
                per_1000.append((user + system) / 1000)
            after = loadavg()
        finally:
            proc.kill()
            proc.wait()
            loop.call_soon_threadsafe(loop.stop)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = (
        f"| {args.label} | {stamp} | {commit()} | {args.rate} | "
        f"{statistics.median(per_1000):.3f} ({min(per_1000):.3f}-{max(per_1000):.3f}) | "
        f"{before} -> {after} |\n"
    )
    with open(args.out, "a") as f:
        f.write(line)
    print(line, end="")


if __name__ == "__main__":
    main()
