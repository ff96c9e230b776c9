"""gRPC unary server and open-loop client for the mesh benchmark (run inside pod netns).

    python grpc_echo.py serve --port 50051
    python grpc_echo.py load --addr 10.96.0.12 --port 50051 --rate 500 --duration 5

No protobuf: one generic method `/bench.Echo/Call` carries raw bytes (a 1 KiB request, a 1 KiB
answer). The client starts each call at its scheduled time on one HTTP/2 channel and measures
from that scheduled time, so a late wake-up shows up as latency; the wake-up lag is reported on
its own. Output: one JSON object in the shape of the C load generator's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodemesh.histogram import LatencyHistogram  # noqa: E402

METHOD = "/bench.Echo/Call"
ANSWER = b"z" * 1024


async def _call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return ANSWER


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(_call)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    await server.start()
    print(f"gRPC echo on :{port}", flush=True)
    await server.wait_for_termination()


def _hist_json(h: LatencyHistogram, max_us: int) -> dict[str, object]:
    buckets, counts = h.to_sparse()
    return {
        "buckets": buckets,
        "counts": counts,
        "total": h.total,
        "sum_us": h.sum_us,
        "max_us": max_us,
    }


def load(*, addr: str, port: int, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    """Open loop from this thread; gRPC's own threads complete the calls (futures API), which
    keeps the scheduling thread free of per-call work."""
    latency, lag = LatencyHistogram(), LatencyHistogram()
    worst = {"latency": 0, "lag": 0}
    counts = {"completed": 0, "errors": 0}
    lock = threading.Lock()
    request = b"q" * 1024
    with grpc.insecure_channel(f"{addr}:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        call = channel.unary_unary(METHOD)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic() + 0.01
        measure_from = start + warmup
        total = int((warmup + duration) * rate)
        outstanding = threading.Semaphore(0)

        def done(future: grpc.Future, sched: float) -> None:
            us = int((time.monotonic() - sched) * 1e6)
            if sched >= measure_from:
                with lock:
                    if future.exception() is None:
                        counts["completed"] += 1
                        latency.record(us)
                        worst["latency"] = max(worst["latency"], us)
                    else:
                        counts["errors"] += 1
            outstanding.release()

        for i in range(total):
            sched = start + i / rate
            delay = sched - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if sched >= measure_from:
                us = int((time.monotonic() - sched) * 1e6)
                with lock:
                    lag.record(us)
                    worst["lag"] = max(worst["lag"], us)
            future = call.future(request, timeout=10)
            future.add_done_callback(lambda f, s=sched: done(f, s))
        deadline = time.monotonic() + 12
        for _ in range(total):
            if not outstanding.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    with lock:
        scheduled = lag.total
        return {
            "mode": "grpc-unary",
            "rate": rate,
            "duration_s": duration,
            "warmup_s": warmup,
            "scheduled": scheduled,
            "completed": counts["completed"],
            "status_errors": counts["errors"],
            "conn_errors": 0,
            "timeouts": scheduled - counts["completed"] - counts["errors"],
            "dropped": 0,
            "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
            "latency": _hist_json(latency, worst["latency"]),
            "lag": _hist_json(lag, worst["lag"]),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, default=50051)
    c = sub.add_parser("load")
    c.add_argument("--addr", required=True)
    c.add_argument("--port", type=int, default=50051)
    c.add_argument("--rate", type=float, default=500)
    c.add_argument("--duration", type=float, default=5)
    c.add_argument("--warmup", type=float, default=1)
    args = p.parse_args()
    if args.cmd == "serve":
        asyncio.run(serve(args.port))
    else:
        result = load(
            addr=args.addr,
            port=args.port,
            rate=args.rate,
            duration=args.duration,
            warmup=args.warmup,
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
