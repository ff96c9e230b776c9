"""Micro benchmark of the sans-io observers: how many MB/s of traffic one core can watch.

    .venv/bin/python bench/parsers.py [--exchanges 20000] [--repeat 3]

Workloads, each fed the way the relay would (one feed per message per direction):
  http1-keepalive  POST with a 1 KiB body, 200 with a 1 KiB body, on one keep-alive connection
  http1-bulk       one 16 MiB response body in 64 KiB reads
  h2-grpc-unary    unary gRPC calls with 1 KiB messages (frames made by the h2 package)
  h2-nginx-get     h2load's GETs and nginx's answers (3-byte bodies; server, date, content-type
                   and content-length as literals outside the table, the date new every 1000)
  h2-bulk          one stream of 16 MiB of DATA in 64 KiB reads
MB/s counts the bytes of both directions; best of --repeat runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
from hpack import NeverIndexedHeaderTuple

from nodeagent.protocol.http1 import Http1Observer
from nodeagent.protocol.http2 import Http2Observer

Transcript = list[tuple[str, bytes]]
KIB = 1024


def http1_keepalive(n: int) -> tuple[Transcript, int]:
    body = b"x" * KIB
    req = b"POST /api/vote HTTP/1.1\r\nHost: web-svc.emojivoto:80\r\n"
    req += b"Content-Type: application/json\r\nContent-Length: 1024\r\n\r\n" + body
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1024\r\n\r\n"
    resp += body
    return [("c", req), ("s", resp)] * n, n


def http1_bulk(_: int) -> tuple[Transcript, int]:
    size = 16 * KIB * KIB
    wire: Transcript = [("c", b"GET /big HTTP/1.1\r\nHost: files\r\n\r\n")]
    wire.append(("s", f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode()))
    chunk = b"y" * (64 * KIB)
    wire += [("s", chunk)] * (size // len(chunk))
    return wire, 1


class _Peers:
    def __init__(self) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.wire: Transcript = []
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.flush()

    def flush(self) -> None:
        for _ in range(2):
            out = self.client.data_to_send()
            if out:
                self.wire.append(("c", out))
                self.server.receive_data(out)
            out = self.server.data_to_send()
            if out:
                self.wire.append(("s", out))
                self.client.receive_data(out)


def h2_grpc_unary(n: int) -> tuple[Transcript, int]:
    p = _Peers()
    message = b"\x00" + KIB.to_bytes(4, "big") + b"m" * KIB
    request = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "emoji-svc.emojivoto:8080"),
        (":path", "/emojivoto.v1.EmojiService/ListAll"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    for i in range(n):
        sid = 2 * i + 1
        p.client.send_headers(sid, request)
        p.client.send_data(sid, message, end_stream=True)
        p.flush()
        p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        p.server.send_data(sid, message)
        p.server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
        # Keep flow-control windows open, as a real server's reads would.
        p.server.acknowledge_received_data(len(message), sid)
        p.flush()
        p.client.acknowledge_received_data(len(message), sid)
        p.flush()
    return p.wire, n


def h2_nginx_get(n: int) -> tuple[Transcript, int]:
    p = _Peers()
    request = [
        (":method", "GET"),
        (":path", "/"),
        (":scheme", "http"),
        (":authority", "nginx.tpbench-mesh.svc.cluster.local:8081"),
        ("user-agent", "h2load nghttp2/1.52.0"),
    ]
    for i in range(n):
        sid = 2 * i + 1
        p.client.send_headers(sid, request, end_stream=True)
        p.flush()
        date = f"Fri, 04 Dec 2026 01:{i // 60_000 % 60:02d}:{i // 1000 % 60:02d} GMT"
        answer = [
            (":status", "200"),
            *(
                NeverIndexedHeaderTuple(k, v)
                for k, v in (
                    ("server", "nginx/1.22.1"),
                    ("date", date),
                    ("content-type", "text/plain"),
                    ("content-length", "3"),
                )
            ),
        ]
        p.server.send_headers(sid, answer)
        p.server.send_data(sid, b"ok\n", end_stream=True)
        p.server.acknowledge_received_data(3, sid)
        p.flush()
        p.client.acknowledge_received_data(3, sid)
        p.flush()
    return p.wire, n


def h2_bulk(_: int) -> tuple[Transcript, int]:
    p = _Peers()
    p.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    p.client.increment_flow_control_window(2**31 - 1 - 65535)
    p.flush()
    p.client.send_headers(
        1, [(":method", "GET"), (":scheme", "http"), (":authority", "f"), (":path", "/")], True
    )
    p.flush()
    p.server.send_headers(1, [(":status", "200")])
    p.flush()
    frames = bytearray()
    chunk = b"z" * p.server.max_outbound_frame_size
    for _ in range(16 * KIB * KIB // len(chunk)):
        p.server.send_data(1, chunk)
        frames += p.server.data_to_send()
    p.server.send_data(1, b"", end_stream=True)
    frames += p.server.data_to_send()
    read = 64 * KIB
    p.wire += [("s", bytes(frames[i : i + read])) for i in range(0, len(frames), read)]
    return p.wire, 1


def run(make: Callable[[], Any], wire: Transcript) -> tuple[float, int]:
    obs = make()
    feed_c, feed_s = obs.feed_client, obs.feed_server
    events = 0
    start = time.perf_counter()
    for side, data in wire:
        events += len(feed_c(data) if side == "c" else feed_s(data))
    events += len(obs.close())
    return time.perf_counter() - start, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[int], tuple[Transcript, int]], Callable[[], Any]]] = [
        ("http1-keepalive", http1_keepalive, Http1Observer),
        ("http1-bulk", http1_bulk, Http1Observer),
        ("h2-grpc-unary", h2_grpc_unary, Http2Observer),
        ("h2-nginx-get", h2_nginx_get, Http2Observer),
        ("h2-bulk", h2_bulk, Http2Observer),
    ]
    print(f"{'workload':<16} {'MB/s':>9} {'exchanges/s':>12} {'us/exchange':>12} {'bytes':>12}")
    for name, build, make in cases:
        wire, exchanges = build(args.exchanges)
        total = sum(len(d) for _, d in wire)
        best = min(run(make, wire)[0] for _ in range(args.repeat))
        rate = exchanges / best
        print(
            f"{name:<16} {total / best / 1e6:>9.1f} {rate:>12.0f} {1e6 / rate:>12.1f} {total:>12}"
        )


if __name__ == "__main__":
    main()
