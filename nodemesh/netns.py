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


class NetnsHandle:
    """A network namespace held open (as ztunnel's InpodNetns): its file is opened once, and
    every socket made for it enters through that fd instead of opening the path again. A pod's
    handle lives while the pod is enrolled; after `close()` a socket still asked for (a
    connection draining) opens the path as before. The fd is used and closed under one lock,
    so a socket is never made through an fd number the process has meanwhile reused.
    `lazy=True` opens it with the first socket (on the executor thread that makes it), so
    creating the handle costs the event loop nothing."""

    def __init__(self, netns: str, *, lazy: bool = False) -> None:
        self.path = netns_path(netns)
        self._lock = threading.Lock()
        self._fd = -1
        self._closed = False
        if not lazy:
            self._fd = self._open()

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsError(
                e.errno, f"cannot open network namespace {self.path}: {e.strerror}"
            ) from e

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def socket(self, family: int, type: int, proto: int) -> socket.socket | None:
        """A socket made inside the namespace through the held fd; None once closed."""
        with self._lock:
            if self._closed:
                return None
            if self._fd < 0:
                self._fd = self._open()
            return _socket_through(self._fd, family, type, proto)

    def __repr__(self) -> str:
        return f"NetnsHandle({self.path!r}{', closed' if self.closed else ''})"


def _socket_through(fd: int, family: int, type: int, proto: int) -> socket.socket:
    home = _own_netns_fd()
    _setns(fd)
    try:
        return socket.socket(family, type, proto)
    finally:
        _setns(home)


def socket_in_netns(
    netns: str | NetnsHandle,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """Return a new socket created inside `netns`: a name under /run/netns, a path, or a
    NetnsHandle (through its fd while it is open)."""
    if (
        proto == 0
        and type & 0xF == socket.SOCK_STREAM
        and family in (socket.AF_INET, socket.AF_INET6)
    ):
        # asyncio disables Nagle (TCP_NODELAY) only on sockets whose proto says TCP; a 0 here
        # would cost relayed request/response exchanges a delayed-ACK wait (~40 ms).
        proto = socket.IPPROTO_TCP
    if isinstance(netns, NetnsHandle):
        held = netns.socket(family, type, proto)
        if held is not None:
            return held
        netns = netns.path
    path = netns_path(netns)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from e
    try:
        return _socket_through(target, family, type, proto)
    finally:
        os.close(target)
