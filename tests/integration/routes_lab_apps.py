"""Apps of the routes lab test (run as lab containers or through `lab exec`).

http PORT FAIL_EVERY   HTTP/1.1 server: GET / answers 200 with the pod's name, except every
                       FAIL_EVERY-th request (0: never, 1: always) which gets 503; GET /slow
                       answers after 1 s unless the client gave up first (counted as
                       cancelled); GET /stats: {"seen", "failed", "cancelled"} (not counted).
grpc PORT              gRPC server: /test.Who/Name answers the pod's name.
grpcclient TARGET N    One gRPC channel, N calls, 8 in flight: prints {pod name: answers}.
grpcflaky TARGET N     One gRPC channel, N calls of /test.Who/Flaky (every 5th call a pod gets
                       fails with UNAVAILABLE), one at a time: prints {"ok" or status: calls}.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
from collections import Counter
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("POD_NAME", "unknown")


def http(port: int, fail_every: int) -> None:
    lock = threading.Lock()
    stats = {"seen": 0, "failed": 0, "cancelled": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One write per response (head and body together): unbuffered, the head and the body
        # go as two segments and Nagle + delayed ACK add 40 ms to every keep-alive request.
        wbufsize = 64 * 1024

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/stats":
                with lock:
                    self._send(200, json.dumps(stats).encode())
                return
            if self.path == "/healthz":
                self._send(200, b"ok")
                return
            with lock:
                stats["seen"] += 1
                fail = fail_every > 0 and stats["seen"] % fail_every == 0
                stats["failed"] += fail
            if self.path == "/slow":
                ready, _, _ = select.select([self.connection], [], [], 1.0)
                if ready and not self.connection.recv(1, socket.MSG_PEEK):
                    with lock:
                        stats["cancelled"] += 1
                    self.close_connection = True
                    return
            self._send(503 if fail else 200, NAME.encode())

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def grpc_server(port: int) -> None:
    import grpc

    def who(request: bytes, context: object) -> bytes:
        return NAME.encode()

    lock = threading.Lock()
    flaky_calls = [0]

    def flaky(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            flaky_calls[0] += 1
            fail = flaky_calls[0] % 5 == 1
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "shedding load")
        return NAME.encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Who",
        {
            "Name": grpc.unary_unary_rpc_method_handler(who),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    server.wait_for_termination()


def grpc_client(target: str, n: int) -> None:
    import grpc

    answers: Counter[str] = Counter()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/test.Who/Name")
        for _ in range(n // 8):
            batch = [call.future(b"", timeout=20) for _ in range(8)]
            answers.update(f.result().decode() for f in batch)
    print(json.dumps(answers))


def grpc_flaky(target: str, n: int) -> None:
    import grpc

    outcomes: Counter[str] = Counter()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/test.Who/Flaky")
        for _ in range(n):
            try:
                call(b"", timeout=20)
                outcomes["ok"] += 1
            except grpc.RpcError as exc:
                outcomes[exc.code().name] += 1
    print(json.dumps(outcomes))


def http_loop(host: str, seconds: float, threads: int) -> None:
    import http.client
    import time

    out: list[tuple[float, int, str]] = []
    end = time.time() + seconds

    def run() -> None:
        conn = http.client.HTTPConnection(host, 80, timeout=10)
        while time.time() < end:
            started = time.time()
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                out.append((started, resp.status, resp.read().decode()))
            except OSError as exc:
                out.append((started, 0, str(exc)))
                conn.close()
                conn = http.client.HTTPConnection(host, 80, timeout=10)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps(out))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "http":
        http(int(args[0]), int(args[1]))
    elif cmd == "grpc":
        grpc_server(int(args[0]))
    elif cmd == "httploop":
        http_loop(args[0], float(args[1]), int(args[2]))
    elif cmd == "grpcclient":
        grpc_client(args[0], int(args[1]))
    elif cmd == "grpcflaky":
        grpc_flaky(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown app {cmd!r}")
