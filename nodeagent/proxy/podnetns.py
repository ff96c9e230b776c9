"""Blocking work inside pod network namespaces: marked sockets and reading a netns's addresses.

Everything here runs on an executor thread (socket_in_netns switches the calling thread's netns
for the length of one socket() call), never on the event loop thread.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from nodeagent.rules.transparent import TRANSPARENT_MARK
from nodemesh.netns import NetnsError, NetnsHandle, NetnsId, socket_in_netns

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
_NLMSG = struct.Struct("=IHHII")
_IFADDR = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def marked_socket(
    netns: str | NetnsHandle, *, mark: int, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A non-blocking socket inside `netns` whose packets carry the agent's mark.

    The pod's nat rules RETURN marked packets, so the agent's own connections leave the pod
    as the pod (its address, its routes) without being redirected back to the agent.
    """
    sock = socket_in_netns(netns, socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


IP_TRANSPARENT = 19  # linux/in.h; the socket module does not name it


def transparent_socket(netns: str | NetnsHandle) -> socket.socket:
    """`inbound_socket` before its bind (made ahead: nodeagent.proxy.socketstock)."""
    sock = marked_socket(netns, mark=TRANSPARENT_MARK)
    try:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def inbound_socket(netns: str | NetnsHandle, *, client_ip: str) -> socket.socket:
    """A non-blocking socket inside `netns` for connecting to the pod's app *as* `client_ip`.

    IP_TRANSPARENT lets it bind an address the pod does not own; TRANSPARENT_MARK is what the
    pod's mangle rules and policy route (nodeagent.rules.transparent) use to hand the app's
    replies back to this socket. The app then sees the real client, as without a mesh.
    """
    sock = marked_socket(netns, mark=TRANSPARENT_MARK)
    try:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((client_ip, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def dump_request(seq: int = 1) -> bytes:
    """An RTM_GETADDR dump request for IPv4 addresses."""
    body = _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)
    return (
        _NLMSG.pack(_NLMSG.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
    )


def parse_addresses(data: bytes) -> tuple[set[str], bool]:
    """IPv4 addresses in a chunk of RTM_NEWADDR replies, and whether the dump is done."""
    found: set[str] = set()
    pos = 0
    while pos + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, pos)
        if length < _NLMSG.size or pos + length > len(data):
            raise ValueError("truncated netlink message")
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, pos + _NLMSG.size)
            if err:
                raise OSError(-err, os.strerror(-err))
        elif kind == RTM_NEWADDR:
            family = data[pos + _NLMSG.size]
            attr = pos + _NLMSG.size + _IFADDR.size
            end = pos + length
            while family == socket.AF_INET and attr + _RTATTR.size <= end:
                alen, atype = _RTATTR.unpack_from(data, attr)
                if alen < _RTATTR.size:
                    break
                if atype in (IFA_ADDRESS, IFA_LOCAL) and alen == _RTATTR.size + 4:
                    raw = data[attr + _RTATTR.size : attr + alen]
                    found.add(str(ipaddress.IPv4Address(raw)))
                attr += (alen + 3) & ~3
        pos += (length + 3) & ~3
    return found, False


def addresses_in(netns: str) -> set[str]:
    """The IPv4 addresses configured in `netns` (a netlink socket made inside it)."""
    sock = socket_in_netns(netns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    with sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        sock.send(dump_request())
        found: set[str] = set()
        while True:
            chunk, done = parse_addresses(sock.recv(65536))
            found |= chunk
            if done:
                return found


def find_netns_for(
    ips: Iterable[str], *, netns_dir: Path, skip: set[NetnsId]
) -> dict[str, tuple[str, NetnsId]]:
    """For each wanted IP, the netns under `netns_dir` that holds it (path and identity).

    Namespaces in `skip` (the agent's own, those already enrolled) are not entered.
    """
    wanted = set(ips)
    found: dict[str, tuple[str, NetnsId]] = {}
    try:
        entries = sorted(os.listdir(netns_dir))
    except FileNotFoundError:
        return found
    for name in entries:
        if not wanted - found.keys():
            break
        path = str(netns_dir / name)
        try:
            ident = NetnsId.of(path)
            if ident in skip:
                continue
            held = addresses_in(path)
        except (OSError, NetnsError, ValueError):
            continue  # not a netns (or gone meanwhile)
        for ip in held & wanted:
            found.setdefault(ip, (path, ident))
    return found
