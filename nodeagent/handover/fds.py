"""The socket hand-over's parts that need no event loop: the error, checking a received fd is
the socket it is said to be, the set of sockets a successor gets, and the SEQPACKET listener.

The socket keeper (nodeagent.handover.keeper) and the socket park import only this, not
nodeagent.handover.sockets: they are small blocking processes, and asyncio (with ssl, which it
pulls in) would cost each of them several MB of memory for nothing.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from nodeagent.handover import wire
from nodeagent.handover.wire import HandoverProtocolError, SocketEntry
from nodemesh.unixsock import bind_unix


class HandoverError(OSError):
    """The hand-over could not happen; each side goes on alone."""


# (family, type, listening) each kind of socket must be.
_EXPECTED = {
    ("pod", "outbound"): (socket.AF_INET, socket.SOCK_STREAM, True),
    ("pod", "inbound"): (socket.AF_INET, socket.SOCK_STREAM, True),
    ("pod", "tunnel"): (socket.AF_INET, socket.SOCK_STREAM, True),
    ("pod", "dns-tcp"): (socket.AF_INET, socket.SOCK_STREAM, True),
    ("pod", "dns-udp"): (socket.AF_INET, socket.SOCK_DGRAM, False),
    ("cni", "cni"): (socket.AF_UNIX, socket.SOCK_STREAM, True),
}


def adopt_fd(entry: SocketEntry, fd: int) -> socket.socket:
    """Wrap a received fd, checking it is the kind of socket the entry says (else close it)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise HandoverProtocolError(f"{entry.role} {entry.name}: not a socket ({exc})") from None
    listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    want = _EXPECTED.get((entry.role, entry.name))
    if want is None:  # admin, router: TCP, listening, either family
        ok = sock.family in (socket.AF_INET, socket.AF_INET6)
        ok = ok and sock.type == socket.SOCK_STREAM and listening
    else:
        ok = (sock.family, sock.type, listening) == want
    if not ok:
        sock.close()
        raise HandoverProtocolError(
            f"{entry.role} {entry.name} {entry.netns}: got a {sock.family.name}/{sock.type.name}"
            f"{' listening' if listening else ''} socket, not the one named"
        )
    sock.setblocking(False)
    return sock


class Inherited:
    """The sockets taken over from the predecessor, claimed one pod at a time. (A plain class:
    the keeper imports this module and would pay ~1.1 MB for `dataclasses`.)"""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, socket.socket]] = {}
        self.cni: socket.socket | None = None
        self.admin: socket.socket | None = None
        self.router: socket.socket | None = None

    def add(self, entry: SocketEntry, sock: socket.socket) -> None:
        if entry.role == "pod":
            self.pods.setdefault(entry.netns, {})[entry.name] = sock
        elif entry.role == "cni":
            self.cni = sock
        elif entry.role == "router":
            self.router = sock
        else:
            self.admin = sock

    def take_pod(self, netns: str) -> dict[str, socket.socket] | None:
        socks = self.pods.pop(netns, None)
        if socks is not None and set(socks) != set(wire.POD_SOCKETS):
            for s in socks.values():
                s.close()
            return None
        return socks

    def count(self) -> int:
        return (
            sum(len(s) for s in self.pods.values())
            + (self.cni is not None)
            + (self.admin is not None)
            + (self.router is not None)
        )

    def close(self) -> None:
        """Close what nobody claimed (pods that left meanwhile); the others own theirs."""
        for socks in self.pods.values():
            for s in socks.values():
                s.close()
        self.pods.clear()
        for kept in (self.cni, self.admin, self.router):
            if kept is not None:
                kept.close()
        self.cni = self.admin = self.router = None


def bind_seqpacket(path: Path) -> socket.socket:
    """The handover's listener (see bind_unix)."""
    return bind_unix(path, kind=socket.SOCK_SEQPACKET, backlog=4)
