"""Small apps for test_lab_traffic.py, run inside lab pods with the system python3 (stdlib only).

http PORT               HTTP/1.1 on [::]:PORT (IPv4 and IPv6), 200 "ok <path>" to any GET
udp PORT...             a UDP echo server on 0.0.0.0 for each port
get6 ADDR IFACE PORT M  GET /M over IPv6 to ADDR%IFACE:PORT; prints JSON (status or error)
udpask HOST PORT        one datagram, then wait 3 s for the echo; prints JSON
listen PORT SECONDS     accept TCP on PORT for SECONDS (something for a probe to find)
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = f"ok {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.client_address[0]} {fmt % args}", flush=True)


class DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def http(port: int) -> None:
    DualStack(("::", port), Handler).serve_forever()


def udp(ports: list[int]) -> None:
    def echo(port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        while True:
            data, peer = s.recvfrom(2048)
            print(f"udp {port} from {peer[0]}", flush=True)
            s.sendto(b"echo " + data, peer)

    threads = [threading.Thread(target=echo, args=(p,), daemon=True) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def get6(addr: str, iface: str, port: int, marker: str) -> dict[str, object]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((addr, port, 0, socket.if_nametoindex(iface)))
        s.sendall(f"GET /{marker} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = s.recv(4096).decode(errors="replace")
        return {"status": reply.split("\r\n", 1)[0], "body": reply[-200:]}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def udpask(host: str, port: int) -> dict[str, object]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.connect((host, port))
        s.send(b"ping")
        return {"reply": s.recv(2048).decode()}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        s.close()


def listen(port: int, seconds: float) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = s.accept()
            conn.close()
        except TimeoutError:
            pass


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "http":
        http(int(args[0]))
    elif cmd == "udp":
        udp([int(a) for a in args])
    elif cmd == "get6":
        print(json.dumps(get6(args[0], args[1], int(args[2]), args[3])), flush=True)
    elif cmd == "udpask":
        print(json.dumps(udpask(args[0], int(args[1]))), flush=True)
    elif cmd == "listen":
        listen(int(args[0]), float(args[1]))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
