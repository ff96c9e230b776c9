"""A pod's network namespace held open (NetnsHandle): its sockets enter through the fd taken
once, not by opening the path again, so they land in the same namespace even after its name is
gone; once the handle is closed, the path is used again as before (root only)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from nodemesh.netns import NetnsError, NetnsHandle, NetnsId, socket_in_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
]

SIOCGSKNS = 0x894C  # linux/sockios.h: an fd of the netns a socket was made in


def netns_of(sock: socket.socket) -> NetnsId:
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        st = os.fstat(fd)
        return NetnsId(st.st_dev, st.st_ino)
    finally:
        os.close(fd)


@pytest.fixture
def netns() -> Iterator[str]:
    name = "zzhouse-" + uuid.uuid4().hex[:8]  # NODEMESH_LEAKCHECK_ONLY=zzhouse
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def test_sockets_go_through_the_held_fd_even_when_the_name_is_gone(netns: str) -> None:
    ident = NetnsId.of(f"/run/netns/{netns}")
    handle = NetnsHandle(netns)
    try:
        with socket_in_netns(handle) as sock:
            assert netns_of(sock) == ident
        subprocess.run(["ip", "netns", "delete", netns], check=True)
        with pytest.raises(NetnsError):  # what opening the path for every socket meets
            socket_in_netns(netns)
        with socket_in_netns(handle, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            assert netns_of(sock) == ident  # the same namespace, through the fd
    finally:
        handle.close()
    assert handle.closed
    with pytest.raises(NetnsError, match=netns):  # closed: the path again, and its error
        socket_in_netns(handle)


def test_a_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NetnsError, match="zzhouse-absent"):
        NetnsHandle("zzhouse-absent")


def test_a_lazy_handle_opens_with_its_first_socket_and_holds_from_then(netns: str) -> None:
    ident = NetnsId.of(f"/run/netns/{netns}")
    handle = NetnsHandle(netns, lazy=True)
    try:
        with socket_in_netns(handle) as sock:  # opens it
            assert netns_of(sock) == ident
        subprocess.run(["ip", "netns", "delete", netns], check=True)
        with socket_in_netns(handle) as sock:
            assert netns_of(sock) == ident
    finally:
        handle.close()
