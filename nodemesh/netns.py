"""Network namespace helpers: identify a netns and make sockets inside one from any thread.

setns(2) changes only the calling thread, so a socket is made inside a namespace by switching the
current thread in, calling socket(), and switching back, with nothing else run in between. Callers
on an event loop run this in an executor thread, never on the loop thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_local = threading.local()


class NetnsError(OSError):
    """A network namespace could not be entered or found."""


@dataclass(frozen=True)
class NetnsId:
    """A netns is identified by the device and inode of its nsfs file, not by its name."""

    dev: int
    ino: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> NetnsId:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


def _own_netns_fd() -> int:
    fd: int | None = getattr(_local, "home_fd", None)
    if fd is None:
        fd = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        _local.home_fd = fd
    return fd


def netns_path(name_or_path: str) -> str:
    """Accept a name under /run/netns or a path (/proc/PID/ns/net, /run/netns/X)."""
    return name_or_path if "/" in name_or_path else str(NETNS_RUN_DIR / name_or_path)


def socket_in_netns(
    netns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """Return a new socket created inside `netns` (a name under /run/netns or a path)."""
    if (
        proto == 0
        and type & 0xF == socket.SOCK_STREAM
        and family in (socket.AF_INET, socket.AF_INET6)
    ):
        # asyncio disables Nagle (TCP_NODELAY) only on sockets whose proto says TCP; a 0 here
        # would cost relayed request/response exchanges a delayed-ACK wait (~40 ms).
        proto = socket.IPPROTO_TCP
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from e
    home = _own_netns_fd()
    try:
        _setns(target)
        try:
            return socket.socket(family, type, proto)
        finally:
            _setns(home)
    finally:
        os.close(target)
