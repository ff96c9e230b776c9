"""What the L7 HTTP/1 path costs beyond moving bytes: three proxies on loopback, same load.

    .venv/bin/python -m bench.l7_floor [--rate 1000] [--seconds 6] [--rounds 3] [--out FILE]

Each proxy runs in this process on uvloop (as the agent) between hey (keep-alive, 4
connections, --rate requests per second) and an nginx answering "ok":

- `protocol`: a blind byte relay written as two asyncio Protocols (the shape of the agent's L4
  relay, nodeagent/proxy/l4proxy.py): no parsing, one upstream connection per client one.
- `streams`: the same blind relay written with StreamReader/StreamWriter and one pumping
  coroutine per direction (the shape the L7 path is written in).
- `l7`: the agent's L7 HTTP/1 path (`serve` in nodeagent/proxy/l7/http1.py) with one route
  (a request timeout and a retry rule), as bench.l7_h1_loopback.

Printed per run: this process's user and system CPU per request answered (nginx and hey are
other processes); then per proxy the median over the rounds. The rounds alternate the proxies.
`l7 - streams` is what parsing, routing, the exchange and the request's coroutines add;
`streams - protocol` what the coroutine-and-streams shape costs by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.l7_h1_loopback import WEB, nginx, routed, run_hey
from bench.l7_paths import loadavg
from nodeagent.proxy.l7.http1 import serve


class _Half(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.peer: _Half | None = None
        self.held: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.held.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def protocol_relay(port: int) -> Callable[[], asyncio.Protocol]:
    def make() -> asyncio.Protocol:
        down = _Half()

        async def connect() -> None:
            loop = asyncio.get_running_loop()
            _, up = await loop.create_connection(_Half, "127.0.0.1", port)
            assert isinstance(up, _Half)
            up.peer, down.peer = down, up
            for data in down.held:
                up.transport.write(data)
            down.held.clear()

        asyncio.ensure_future(connect())
        return down

    return make


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def streams_relay(port: int) -> Callable[..., Any]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    return handle


def l7_path(port: int) -> Callable[..., Any]:
    ctx = routed(port)
    return lambda r, w: serve(ctx, r, w, service=WEB, port=80)


def start(loop: asyncio.AbstractEventLoop, kind: str, port: int) -> int:
    async def listen() -> int:
        if kind == "protocol":
            server = await loop.create_server(protocol_relay(port), "127.0.0.1", 0)
        else:
            make = streams_relay(port) if kind == "streams" else l7_path(port)
            server = await asyncio.start_server(make, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    return asyncio.run_coroutine_threadsafe(listen(), loop).result(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args()
    kinds = ["protocol", "streams", "l7"]
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    say(f"# l7_floor: {args.rate} rps, {args.seconds:g} s per run, hey -c 4; load {loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = nginx(Path(tmp))
        try:
            urls = {k: f"http://127.0.0.1:{start(loop, k, port)}/" for k in kinds}
            for url in urls.values():  # warm-up: connections, pools, caches
                subprocess.run(["hey", "-n", "300", "-c", "4", url], capture_output=True)
            for rnd in range(args.rounds):
                for kind in kinds if rnd % 2 == 0 else kinds[::-1]:
                    done, user, system = run_hey(urls[kind], seconds=args.seconds, rate=args.rate)
                    results[kind].append((user, system))
                    say(
                        f"round {rnd + 1} {kind:8s} {user + system:6.1f} us/req (user {user:5.1f}, "
                        f"sys {system:5.1f}); answered {done}; load {loadavg()}"
                    )
        finally:
            proc.kill()
            proc.wait()
            loop.call_soon_threadsafe(loop.stop)
    say("")
    say("| proxy | us CPU per request: median (min-max) | user | sys |")
    say("|---|---|---|---|")
    for kind in kinds:
        total = [u + s for u, s in results[kind]]
        say(
            f"| {kind} | {statistics.median(total):.0f} ({min(total):.0f}-{max(total):.0f}) | "
            f"{statistics.median(u for u, _ in results[kind]):.0f} | "
            f"{statistics.median(s for _, s in results[kind]):.0f} |"
        )
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
