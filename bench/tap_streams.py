"""What concurrent tap streams cost the data plane: hey's p99 through the mesh, without and with
N tap streams on the deployment it calls.

    sudo .venv/bin/nodemesh lab up --name tapb --demo --api-port 0 --dashboard-port 0 --demo-port 0
    sudo .venv/bin/python bench/tap_streams.py --lab tapb [--streams 300] [--seconds 20] [--rps 200]

hey runs inside vote-bot's pod against web-svc (both meshed: an mTLS hop through two agents);
the streams tap deploy/web at max_rps 1000 each, as the lab admin (the CLI's token). It prints
how many streams the control plane accepted and p50/p99 of both runs. Nothing is asserted: it
is a measurement, noisy on a shared machine (run it twice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import grpc

from nodemesh.api import public_pb2 as pb
from nodemesh.api import public_pb2_grpc as pbg
from nodemesh.lab.paths import LabPaths

NODEMESH = str(Path(sys.executable).parent / "nodemesh")


def hey(lab: str, *, seconds: int, rps: int) -> dict[str, float]:
    workers = 8
    out = subprocess.run(
        [NODEMESH, "lab", "exec", "--name", lab, "-n", "emojivoto", "deploy/vote-bot", "--",
         "hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(max(1, rps // workers)),
         "http://web-svc.emojivoto.svc.cluster.local/api/list"],
        capture_output=True, text=True, timeout=seconds + 120, check=True,
    ).stdout  # fmt: skip
    got = {}
    for pct in ("50", "99"):
        m = re.search(rf"{pct}% in ([0-9.]+) secs", out)
        got[f"p{pct}_ms"] = float(m.group(1)) * 1000 if m else float("nan")
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    got["rps"] = float(m.group(1)) if m else 0.0
    codes = {c: int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    got["non_200"] = float(sum(n for c, n in codes.items() if c != "200"))
    return got


class Streams:
    """N tap streams held open in a loop of their own; counts the accepted and the refused."""

    def __init__(self, address: str, token: str | None, n: int) -> None:
        self.address, self.token, self.n = address, token, n
        self.accepted = 0
        self.refused: dict[str, int] = {}
        self.events = 0
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    async def _one(self, stub: pbg.PublicStub) -> None:
        md = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        req = pb.TapRequest(resource=pb.Resource(kind="deploy", namespace="emojivoto", name="web"),
                            max_rps=1000)  # fmt: skip
        call = stub.Tap(req, metadata=md)
        try:
            async for _ in call:
                self.events += 1
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.refused[e.code().name] = self.refused.get(e.code().name, 0) + 1

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pbg.PublicStub(channel)
            tasks = [asyncio.ensure_future(self._one(stub)) for _ in range(self.n)]
            await asyncio.sleep(3)
            self.accepted = sum(1 for t in tasks if not t.done())
            self.ready.set()
            await self.stop.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Streams:
        self.thread.start()
        self.ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lab", required=True)
    p.add_argument("--streams", type=int, default=300)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--rps", type=int, default=200)
    args = p.parse_args()
    paths = LabPaths(args.lab)
    cmd = [NODEMESH, "lab", "status", "--name", args.lab, "-o", "json"]
    status = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    fwd = next(f for f in status["forwards"] if f["service"] == "nodemesh-controlplane")
    address = f"{fwd['host']}:{fwd['local_port']}"
    token_file = paths.root / "access" / "admin.token"
    token = token_file.read_text().strip() if token_file.exists() else None

    quiet = hey(args.lab, seconds=args.seconds, rps=args.rps)
    with Streams(address, token, args.streams) as streams:
        tapped = hey(args.lab, seconds=args.seconds, rps=args.rps)
        events = streams.events
    print(json.dumps({
        "streams_asked": args.streams, "streams_accepted": streams.accepted,
        "streams_refused": streams.refused, "tap_events_received": events,
        "no_tap": quiet, "with_taps": tapped,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
