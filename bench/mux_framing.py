"""The multiplexed tunnel's framing alone, on loopback: CPU per MiB and per exchange.

    .venv/bin/python -m bench.mux_framing [--mib 256] [--exchanges 20000] [--rounds 3]

Two `MuxSession`s (nodeagent.proxy.mux) over a plain TCP connection on 127.0.0.1 (no TLS: TLS
costs the same through a stream as through a tunnel connection of its own, so what is left is
what the stream adds), one stream between them, against the same protocols on a TCP connection
of their own (`raw`, what a one-connection tunnel's framing costs: nothing). `bulk` pushes
`--mib` MiB one way in 64 KiB writes, as a relay does with what it read; `chatty` does
`--exchanges` request/answer pairs of 100 bytes each way, as a redis client does. The figure is
this process's CPU (both ends run in it) per MiB and per exchange, medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from typing import Any

from nodeagent.proxy.mux import MuxSession, MuxStream

CHUNK = 64 * 1024


class Sink(asyncio.Protocol):
    """Counts what arrives; `done` when `want` bytes came."""

    def __init__(self, want: int) -> None:
        self.got, self.want = 0, want
        self.done: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.want and not self.done.done():
            self.done.set_result(None)


class Pump(asyncio.Protocol):
    """Writes `total` bytes in CHUNK writes, respecting pause_writing."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.paused = False
        self.block = b"x" * CHUNK

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def go(self) -> None:
        while self.left > 0 and not self.paused:
            n = min(CHUNK, self.left)
            self.left -= n
            self.transport.write(self.block[:n] if n < CHUNK else self.block)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_event_loop().call_soon(self.go)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class PingPong(asyncio.Protocol):
    def __init__(self, n: int, size: int = 100) -> None:
        self.left, self.msg, self.got = n, b"p" * size, 0
        self.done: asyncio.Future[None] = asyncio.get_event_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def go(self) -> None:
        self.transport.write(self.msg)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < len(self.msg):
            return
        self.got = 0
        self.left -= 1
        if self.left <= 0:
            self.done.set_result(None)
        else:
            self.transport.write(self.msg)


async def _pair(mux: bool, client: asyncio.Protocol, server: asyncio.Protocol) -> list[Any]:
    """Connect `client` to `server` over loopback, through one stream of a MuxSession pair or
    directly; returns what to close."""
    return await _pairs(mux, [(client, server)])


async def _pairs(mux: bool, pairs: list[tuple[asyncio.Protocol, asyncio.Protocol]]) -> list[Any]:
    """Connect each client to its server: streams of one MuxSession pair, or TCP connections."""
    if not mux:
        closers: list[Any] = []
        for client, server in pairs:
            closers += await _connect(False, client, server)
        return closers
    return await _connect(True, *pairs[0], more=pairs[1:])


async def _connect(
    mux: bool,
    client: asyncio.Protocol,
    server: asyncio.Protocol,
    more: list[tuple[asyncio.Protocol, asyncio.Protocol]] = (),  # type: ignore[assignment]
) -> list[Any]:
    loop = asyncio.get_running_loop()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    csock = socket.socket()
    csock.setblocking(False)
    await loop.sock_connect(csock, lsock.getsockname())
    ssock, _ = await loop.sock_accept(lsock)
    lsock.close()
    for s in (csock, ssock):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not mux:
        ct, _ = await loop.create_connection(lambda: client, sock=csock)
        st, _ = await loop.create_connection(lambda: server, sock=ssock)
        return [ct, st]

    servers = [server, *(s for _, s in more)]

    def on_stream(stream: MuxStream, target: tuple[str, int]) -> None:
        srv = servers.pop(0)
        stream.protocol = srv
        srv.connection_made(stream)  # type: ignore[arg-type]

    cs = MuxSession(client_side=True)
    ss = MuxSession(client_side=False, on_stream=on_stream)
    ct, _ = await loop.create_connection(lambda: cs, sock=csock)
    st, _ = await loop.create_connection(lambda: ss, sock=ssock)
    ss.start(st)
    cs.start(ct)
    await asyncio.sleep(0.05)  # settings exchanged
    for c in [client, *(c for c, _ in more)]:
        cs.open_stream(c, ("127.0.0.1", 1))
    await asyncio.sleep(0.05)
    return [ct, st]


async def bulk(mux: bool, mib: int) -> float:
    total = mib << 20
    pump, sink = Pump(total), Sink(total)
    closers = await _pair(mux, pump, sink)
    t0 = time.process_time()
    pump.go()
    await asyncio.wait_for(sink.done, 600)
    cpu = time.process_time() - t0
    for c in closers:
        c.close()
    return cpu / mib * 1000  # ms per MiB


async def chatty(mux: bool, n: int) -> float:
    pp = PingPong(n)
    closers = await _pair(mux, pp, Echo())
    t0 = time.process_time()
    pp.go()
    await asyncio.wait_for(pp.done, 600)
    cpu = time.process_time() - t0
    for c in closers:
        c.close()
    return cpu / n * 1e6  # us per exchange


async def chatty_many(mux: bool, n: int, conns: int = 20) -> float:
    """`conns` app connections at once, `n` exchanges in all (redis-benchmark -c 20)."""
    pps = [PingPong(n // conns) for _ in range(conns)]
    closers = await _pairs(mux, [(pp, Echo()) for pp in pps])
    t0 = time.process_time()
    for pp in pps:
        pp.go()
    await asyncio.wait_for(asyncio.gather(*(pp.done for pp in pps)), 600)
    cpu = time.process_time() - t0
    for c in closers:
        c.close()
    return cpu / n * 1e6  # us per exchange


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--exchanges", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    res: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for mux in (False, True):
            name = "mux" if mux else "raw"
            res.setdefault(f"bulk {name} ms/MiB", []).append(asyncio.run(bulk(mux, args.mib)))
            res.setdefault(f"chatty {name} us/exchange", []).append(
                asyncio.run(chatty(mux, args.exchanges))
            )
            res.setdefault(f"chatty x20 {name} us/exchange", []).append(
                asyncio.run(chatty_many(mux, args.exchanges))
            )
    load = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    print(f"# bench/mux_framing.py, {args.rounds} rounds, load average {load}")
    for k, v in res.items():
        print(f"{k:30s} {statistics.median(v):8.2f} ({min(v):.2f}-{max(v):.2f})")


if __name__ == "__main__":
    main()
