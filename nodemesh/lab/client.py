"""Talking to a lab's supervisor over its unix socket (one JSON request, one JSON reply)."""

from __future__ import annotations

import json
import socket
from typing import Any

from nodemesh.lab.paths import LabPaths


class LabUnavailable(RuntimeError):
    pass


class LabRequestFailed(RuntimeError):
    pass


class LabClient:
    def __init__(self, paths: LabPaths, *, timeout: float = 120.0) -> None:
        self.paths = paths
        self.timeout = timeout

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.paths.socket))
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (OSError, TimeoutError) as e:
            raise LabUnavailable(
                f"lab {self.paths.name!r} supervisor is not answering at {self.paths.socket}: {e}"
            ) from e
        finally:
            s.close()
        try:
            reply: dict[str, Any] = json.loads(buf)
        except json.JSONDecodeError as e:
            raise LabUnavailable(f"lab {self.paths.name!r} supervisor gave no reply") from e
        if not reply.get("ok"):
            raise LabRequestFailed(str(reply.get("error", "unknown error")))
        return reply
