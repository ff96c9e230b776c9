"""Apps of the HTTP/2 drain lab test (lab containers, or run in a pod's netns).

server PORT     gRPC server: /test.Who/Slow answers the pod's name after 200 ms. It ignores
                SIGTERM (as an app without a handler behind a PID-1 shell would), so it ends by
                SIGKILL at the end of its grace period, never sending a GOAWAY of its own.
client TARGET   One gRPC channel for its whole life, calls of /test.Who/Slow back to back (one
                is always in flight) until its standard input closes; one JSON line per call:
                {"ok": true, "who": POD} or {"ok": false, "code": NAME, "details": TEXT}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

NAME = os.environ.get("POD_NAME", "unknown")
CALL_SECONDS = 0.2


def server(port: int) -> None:
    import grpc

    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def slow(request: bytes, context: object) -> bytes:
        time.sleep(CALL_SECONDS)
        return NAME.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Who", {"Slow": grpc.unary_unary_rpc_method_handler(slow)}
    )
    srv = grpc.server(futures.ThreadPoolExecutor(8))
    srv.add_generic_rpc_handlers((handler,))
    srv.add_insecure_port(f"0.0.0.0:{port}")
    srv.start()
    srv.wait_for_termination()


def client(target: str) -> None:
    import grpc

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/test.Who/Slow")
        while not stop.is_set():
            try:
                line = {"ok": True, "who": call(b"", timeout=10).decode()}
            except grpc.RpcError as exc:
                line = {"ok": False, "code": exc.code().name, "details": exc.details()}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    cmd, arg = sys.argv[1:3]
    if cmd == "server":
        server(int(arg))
    elif cmd == "client":
        client(arg)
    else:
        raise SystemExit(f"unknown app {cmd!r}")
