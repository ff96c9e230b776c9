"""Apps for test_lab_authz.py, run inside lab pods with the checkout's venv python.

serve            the server pod: HTTP/1.1 on 8080 (200 "ok <path>"; /healthz for the probe),
                 a gRPC service /authz.Test/Echo on 8081 (grpcio, raw bytes), a TCP echo on 8082,
                 and on 9100 (no policy covers it) GET /counts: what the app itself saw on
                 each, as JSON {"http": [[client_ip, method, path], ...], "grpc": n, "tcp": n}
grpc HOST PORT   one unary call with a real gRPC client (grpcio); prints JSON {code, details}
tcp HOST PORT    connect, send a line, wait for the echo; prints JSON {reply} or {error}
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN: dict[str, list[list[str]] | int] = {"http": [], "grpc": 0, "tcp": 0}
LOCK = threading.Lock()


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path != "/healthz":
            with LOCK:
                SEEN["http"].append([self.client_address[0], self.command, self.path])  # type: ignore[union-attr]
        body = f"ok {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


class Counts(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        with LOCK:
            body = json.dumps(SEEN).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


def _tcp_echo(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    while True:
        conn, _ = srv.accept()
        with LOCK:
            SEEN["tcp"] += 1  # type: ignore[operator]

        def echo(c: socket.socket) -> None:
            with c:
                while data := c.recv(4096):
                    c.sendall(data)

        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def serve() -> None:
    import grpc

    def echo(request: bytes, context: object) -> bytes:
        with LOCK:
            SEEN["grpc"] += 1  # type: ignore[operator]
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "authz.Test", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("0.0.0.0:8081")
    server.start()
    for port, handler_cls in ((8080, App), (9100, Counts)):
        httpd = ThreadingHTTPServer(("0.0.0.0", port), handler_cls)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    threading.Thread(target=_tcp_echo, args=(8082,), daemon=True).start()
    print("serving", flush=True)
    threading.Event().wait()


def grpc_call(host: str, port: str) -> None:
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary("/authz.Test/Echo")
        try:
            call(b"hello", timeout=10)
            print(json.dumps({"code": "OK", "details": ""}))
        except grpc.RpcError as exc:
            print(json.dumps({"code": exc.code().name, "details": exc.details()}))


def tcp_call(host: str, port: str) -> None:
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.settimeout(5)
            s.sendall(b"hello\n")
            reply = s.recv(100)
            print(json.dumps({"reply": reply.decode(errors="replace")}))
    except OSError as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    {"serve": lambda: serve(), "grpc": lambda: grpc_call(*rest), "tcp": lambda: tcp_call(*rest)}[
        cmd
    ]()
