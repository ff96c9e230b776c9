"""A stand-in old agent for the hand-over tests, run as its own process.

It listens on 127.0.0.1 (printing the port), answers each connection with b"old" unless
started with --no-accept (then connections wait in the accept queue), and hands the socket over
through nodeagent.handover.sockets at the path given; after the hand-over it stops accepting, prints
"handed", and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path

import uvloop

from nodeagent.handover.sockets import HandoverServer
from nodeagent.handover.wire import SocketEntry


async def main(path: Path, *, accept: bool, role: str) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1024)
    lsock.setblocking(False)
    loop = asyncio.get_running_loop()
    server: asyncio.Server | None = None

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"old")
        await writer.drain()
        writer.close()

    if accept:
        server = await asyncio.start_server(answer, sock=lsock)

    async def freeze() -> list[tuple[SocketEntry, socket.socket]]:
        if role == "router":  # the agent's router-mode port on the node
            return [(SocketEntry("router", "router"), lsock)]
        return [(SocketEntry("pod", "outbound", "/test/netns"), lsock)]

    async def resume() -> None:
        print("resumed", flush=True)

    async def handed(pid: int) -> None:
        if server is not None:
            server.close()
        else:
            lsock.close()
        print(f"handed {pid}", flush=True)

    ho = HandoverServer(path, pods=lambda: 1, freeze=freeze, resume=resume, handed=handed)
    ho.start()
    print(lsock.getsockname()[1], flush=True)
    await ho.serve()
    await asyncio.sleep(0.2)
    del loop


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("path", type=Path)
    p.add_argument("--no-accept", action="store_true")
    p.add_argument("--role", default="pod", choices=["pod", "router"])
    a = p.parse_args()
    # On uvloop, as the agent runs (nodeagent.main). Plain asyncio (3.11) makes an accepted
    # connection's transport in a later task, and a server closed meanwhile (the hand-over's
    # "handed") fails that transport and closes the connection unanswered: the test then saw
    # an empty answer about one run in ten on a loaded machine. uvloop accepts and attaches in
    # one callback, so nothing accepted is lost when the server closes.
    uvloop.run(main(a.path, accept=not a.no_accept, role=a.role))
    sys.exit(0)
