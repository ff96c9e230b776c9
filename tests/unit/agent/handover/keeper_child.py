"""A stand-in agent for the socket keeper tests: takes its listener back from the keeper or
makes one (and has the keeper keep it), writes "PID PORT" to the file named, and answers each
connection with its pid."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from nodeagent.handover.keeper import KeeperLink
from nodeagent.handover.wire import SocketEntry


def main(report: Path) -> None:
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
    lsock.setblocking(True)
    while True:
        conn, _ = lsock.accept()
        conn.sendall(f"pid {os.getpid()}".encode())
        conn.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
