"""A stand-in agent for the socket park tests: as keeper_child, and on SIGTERM it lets go of its
sockets (DROP) before it exits, as the agent does on its way out."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from nodeagent.handover.keeper import KeeperLink
from nodeagent.handover.wire import SocketEntry


def main(report: Path) -> None:
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    link = KeeperLink.from_env()
    assert link is not None
    socks = link.take().pods.pop("/test/netns", None)
    if socks is not None:
        lsock = socks["outbound"]
    else:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1024)
        link.keep([(SocketEntry("pod", "outbound", "/test/netns"), lsock)])
    tmp = report.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()} {lsock.getsockname()[1]}")
    tmp.rename(report)
    lsock.settimeout(0.1)
    while not stopping:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        conn.sendall(f"pid {os.getpid()}".encode())
        conn.close()
    link.drop(netns="/test/netns")
    link.drop()
    lsock.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
