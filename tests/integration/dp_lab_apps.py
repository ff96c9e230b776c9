"""Apps for the data-plane lab tests (stdlib only; run as lab containers and via `lab exec`).

Servers (containers):
  http     HTTP/1.1 keep-alive on :8080: any method; answers "<pod> <bytes read> <x-marker>";
           `Upgrade: websocket` gets 101 and then a raw echo; SIGTERM drains as a Kubernetes
           app should: it keeps serving for a moment (its endpoint's removal takes time to
           reach every proxy), then closes its listener, answers each open connection's next
           request with `Connection: close` and exits.
           `GET /bytes/N` answers N random bytes with their SHA-256 in `X-Sha256`.
  banner   on :2525 says "220 <pod> ready" the moment a client connects, then echoes lines.
  grpc     (needs grpcio: run with the checkout's venv python) gRPC on :50051, no codegen:
           unary-stream `/nm.Stream/Count` takes b"<count> <size>" and streams COUNT raw
           messages of SIZE bytes, each starting with its 4-byte big-endian index, a few ms
           apart; the trailing metadata names the pod (`pod`).
Clients (printing one JSON object):
  load URL SECONDS WORKERS      keep-alive GETs from WORKERS threads until SECONDS pass; a
                               request on a reused connection that got no response byte at all
                               is retried once on a new one (as HTTP clients do); reports ok,
                               failed, the errors and which pods answered.
  probe HOST                   WebSocket-style upgrade + echo, banner timing on :2525, a 50 MB
                               POST, each with its outcome.
  get URL MARKER               five keep-alive requests carrying MARKER (header and body).
  stream HOST:PORT COUNT SIZE  (venv python) calls `/nm.Stream/Count` through HOST: the
                               messages' indices in arrival order, sizes, status, pod.
  slow URL BYTES               GETs URL/bytes/BYTES reading 64 KiB every 10 ms, while quick
                               requests on other connections to URL run now and then: the
                               body's SHA-256 against the server's, each quick one's time.
  tls HOST CA [CERT KEY]       a TLS 1.3 client straight to HOST:4143 (with a client
                               certificate or none) sending a tunnel preamble for port 8080:
                               how far it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

POD = os.environ.get("POD_NAME", "?")
DRAIN_ACCEPT = 3.0


# --- servers ------------------------------------------------------------------------------


class Draining:
    stop = threading.Event()  # SIGTERM received
    closed = threading.Event()  # listener closed: answer each connection's next request, then close
    open = 0  # connections accepted and not yet closed
    lock = threading.Lock()


def _read_head(conn: socket.socket, buf: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    del buf[:end]
    return head


def _serve_http(conn: socket.socket) -> None:
    buf = bytearray()
    conn.settimeout(60)
    try:
        while True:
            head = _read_head(conn, buf)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (x.partition(":") for x in lines[1:] if x)
            }
            if headers.get("upgrade", "").lower() == "websocket":
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                )
                if buf:
                    conn.sendall(bytes(buf))
                while data := conn.recv(65536):
                    conn.sendall(data)
                return
            path = lines[0].split(" ")[1] if " " in lines[0] else "/"
            if path.startswith("/bytes/"):
                data = os.urandom(int(path.removeprefix("/bytes/")))
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Sha256: %s\r\n\r\n"
                    % (len(data), hashlib.sha256(data).hexdigest().encode())
                )
                conn.sendall(data)
                continue
            length = int(headers.get("content-length", "0"))
            read = len(buf)
            del buf[:length]
            while read < length:
                chunk = conn.recv(min(1 << 20, length - read))
                if not chunk:
                    return
                read += len(chunk)
            body = f"{POD} {length} {headers.get('x-marker', '')}".encode()
            closing = Draining.closed.is_set()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n"
                % (len(body), b"Connection: close\r\n" if closing else b"")
                + body
            )
            if closing:
                return
    except OSError:
        return
    finally:
        conn.close()
        with Draining.lock:
            Draining.open -= 1


def _serve_banner(conn: socket.socket) -> None:
    try:
        conn.sendall(f"220 {POD} ready\r\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)
    except OSError:
        pass
    finally:
        conn.close()
        with Draining.lock:
            Draining.open -= 1


def serve(kind: str) -> None:
    port, handler = {"http": (8080, _serve_http), "banner": (2525, _serve_banner)}[kind]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(256)
    ls.settimeout(0.2)

    def on_term(*_: object) -> None:
        Draining.stop.set()

    signal.signal(signal.SIGTERM, on_term)
    stop_accepting = float("inf")
    while time.monotonic() < stop_accepting:
        if Draining.stop.is_set() and stop_accepting == float("inf"):
            stop_accepting = time.monotonic() + DRAIN_ACCEPT
        try:
            conn, _ = ls.accept()
        except TimeoutError:
            continue
        with Draining.lock:
            Draining.open += 1
        threading.Thread(target=handler, args=(conn,), daemon=True).start()
    ls.close()
    Draining.closed.set()
    # Every accepted connection gets its next request answered (with Connection: close).
    deadline = time.monotonic() + 1.5
    while Draining.open and time.monotonic() < deadline:
        time.sleep(0.05)


def serve_grpc() -> None:
    from concurrent import futures

    import grpc

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        n, size = (int(x) for x in request.split())
        context.set_trailing_metadata((("pod", POD),))
        for i in range(n):
            yield i.to_bytes(4, "big") + bytes(size - 4)
            time.sleep(0.003)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handler = grpc.unary_stream_rpc_method_handler(count)  # no serializers: raw bytes
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("nm.Stream", {"Count": handler}),)
    )
    server.add_insecure_port("0.0.0.0:50051")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


# --- clients ------------------------------------------------------------------------------


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = bytearray()
        self.used = 0

    def request(
        self, path: str, host: str, marker: str = "", body: bytes = b""
    ) -> tuple[int, bytes, bool]:
        method = "POST" if body else "GET"
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nX-Marker: {marker}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.sock.sendall(head.encode() + body)
        self.used += 1
        got_any = False
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(
                    "closed" if not got_any and not self.buf else "closed mid-response"
                )
            got_any = True
            self.buf += chunk
        end = self.buf.index(b"\r\n\r\n") + 4
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end]
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            self.buf += chunk
        payload = bytes(self.buf[:length])
        del self.buf[:length]
        return status, payload, headers.get("connection", "").lower() == "close"


def load(url: str, seconds: float, workers: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    out: dict[str, object] = {"ok": 0, "failed": 0, "retried": 0, "errors": [], "pods": {}}
    lock = threading.Lock()
    start = time.monotonic()
    end = start + seconds

    def work() -> None:
        conn: Conn | None = None
        while time.monotonic() < end:
            for attempt in (1, 2):
                try:
                    if conn is None:
                        conn = Conn(host, port)
                    status, body, close = conn.request(parts.path or "/", host)
                    with lock:
                        if status == 200:
                            out["ok"] += 1  # type: ignore[operator]
                            pod = body.split()[0].decode()
                            out["pods"][pod] = out["pods"].get(pod, 0) + 1  # type: ignore[index,union-attr]
                        else:
                            out["failed"] += 1  # type: ignore[operator]
                            out["errors"].append(f"status {status}")  # type: ignore[union-attr]
                    if close:
                        conn.sock.close()
                        conn = None
                    break
                except OSError as exc:
                    stale = conn is not None and conn.used > 1 and str(exc) == "closed"
                    if conn is not None:
                        conn.sock.close()
                    conn = None
                    if stale and attempt == 1:
                        with lock:
                            out["retried"] += 1  # type: ignore[operator]
                        continue
                    with lock:
                        out["failed"] += 1  # type: ignore[operator]
                        t = time.monotonic() - start
                        out["errors"].append(f"{t:.1f}s {type(exc).__name__}: {exc}")  # type: ignore[union-attr]
                    break
            time.sleep(0.01)
        if conn is not None:
            conn.sock.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def probe(host: str) -> dict[str, object]:
    out: dict[str, object] = {}
    # WebSocket-style upgrade, then bytes that are not HTTP both ways.
    s = socket.create_connection((host, 8080), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    frame = bytes(range(256)) * 4
    s.sendall(frame)
    got = b""
    while len(got) < len(frame):
        got += s.recv(65536)
    out["upgrade"] = head.split(b"\r\n")[0].decode()
    out["ws_echo"] = got == frame
    s.close()
    # The banner must come without the client saying anything first.
    t0 = time.monotonic()
    b = socket.create_connection((host, 2525), timeout=10)
    banner = b.recv(1024)
    out["banner"] = banner.decode(errors="replace").strip()
    out["banner_s"] = time.monotonic() - t0
    b.sendall(b"EHLO x\r\n")
    out["banner_echo"] = b.recv(1024) == b"EHLO x\r\n"
    b.close()
    # 50 MB body.
    c = Conn(host, 8080)
    body = os.urandom(1 << 20) * 50
    t0 = time.monotonic()
    status, payload, _ = c.request("/bulk", host, body=body)
    out["bulk"] = [status, payload.decode().split()[1]]
    out["bulk_s"] = time.monotonic() - t0
    c.sock.close()
    return out


def get(url: str, marker: str) -> dict[str, object]:
    parts = urlsplit(url)
    c = Conn(parts.hostname or "", parts.port or 80)
    results = []
    for _ in range(5):  # keep-alive: five requests on one connection
        status, payload, _ = c.request(
            parts.path or "/", parts.hostname or "", marker, marker.encode()
        )
        results.append([status, payload.decode()])
    c.sock.close()
    return {"results": results}


def stream(target: str, count: int, size: int) -> dict[str, object]:
    # The lab's names are in the pod's /etc/hosts, which gRPC's c-ares resolver does not read.
    os.environ["GRPC_DNS_RESOLVER"] = "native"
    import grpc

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_stream("/nm.Stream/Count")(f"{count} {size}".encode(), timeout=60)
        indices, sizes = [], set()
        try:
            for msg in call:
                indices.append(int.from_bytes(msg[:4], "big"))
                sizes.add(len(msg))
        except grpc.RpcError:
            pass  # the status below tells
        return {
            "indices": indices,
            "sizes": sorted(sizes),
            "code": call.code().name,
            "details": call.details(),
            "pod": dict(call.trailing_metadata() or ()).get("pod"),
        }


def slow(url: str, size: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80
    out: dict[str, object] = {"quick": [], "quick_errors": []}
    done = threading.Event()

    def quick() -> None:
        # A request now and then on its own connection while the big body trickles.
        while not done.wait(0.5):
            t0 = time.monotonic()
            try:
                c = Conn(host, port)
                status, _, _ = c.request("/quick", host)
                c.sock.close()
                out["quick"].append([status, round(time.monotonic() - t0, 3)])  # type: ignore[union-attr]
            except OSError as exc:
                out["quick_errors"].append(f"{type(exc).__name__}: {exc}")  # type: ignore[union-attr]

    s = socket.create_connection((host, port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    t0 = time.monotonic()
    s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    helper = threading.Thread(target=quick)
    helper.start()
    try:
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the head")
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        digest = hashlib.sha256(bytes(buf[end:]))
        got = len(buf) - end
        while got < int(headers["content-length"]):
            time.sleep(0.01)
            chunk = s.recv(64 << 10)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
        out["status"] = lines[0]
        out["bytes"] = got
        out["sha_ok"] = digest.hexdigest() == headers.get("x-sha256")
        out["slow_s"] = round(time.monotonic() - t0, 2)
    finally:
        done.set()
        helper.join()
        s.close()
    return out


def tls(host: str, ca: str, cert: str = "", key: str = "") -> dict[str, object]:
    import ipaddress
    import ssl
    from pathlib import Path

    # `lab exec` runs whatever python3 is on PATH: find the checkout's preamble code.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from nodeagent.protocol import preamble as pre

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    out: dict[str, object] = {}
    raw = socket.create_connection((host, 4143), timeout=10)
    try:
        s = ctx.wrap_socket(raw, server_hostname="probe.identity.nodemesh")
        out["handshake"] = "ok"
        flags = pre.PreambleFlags.WANT_REPLY
        s.sendall(pre.encode_preamble(pre.Preamble(8080, ipaddress.ip_address(host), flags=flags)))
        data = s.recv(pre.REPLY_SIZE)
        out["reply"] = pre.decode_reply(data).reason if data else "closed"
    except (OSError, ssl.SSLError, pre.PreambleError) as exc:
        out.setdefault("handshake", "failed")
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd in ("http", "banner"):
        serve(cmd)
    elif cmd == "grpc":
        serve_grpc()
    elif cmd == "stream":
        print(json.dumps(stream(args[0], int(args[1]), int(args[2]))))
    elif cmd == "slow":
        print(json.dumps(slow(args[0], int(args[1]))))
    elif cmd == "load":
        print(json.dumps(load(args[0], float(args[1]), int(args[2]))))
    elif cmd == "probe":
        print(json.dumps(probe(args[0])))
    elif cmd == "get":
        print(json.dumps(get(args[0], args[1])))
    elif cmd == "tls":
        print(json.dumps(tls(*args)))
