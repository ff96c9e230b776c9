"""Listening unix sockets that nobody can reach before they are ready and private.

Shared by the agent's CNI server and its socket hand-over (keeper, park): only os and socket,
so the socket keeper, which stays lean, can use it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def bind_unix(path: Path, *, kind: int = socket.SOCK_STREAM, backlog: int = 128) -> socket.socket:
    """Listen on a unix socket at `path`: bound under a temporary name, made 0600 and only then
    renamed into place, so nobody ever connects to a socket others could reach."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)
        sock.listen(backlog)
        os.replace(tmp, path)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock
