"""A real nginx on loopback for the L7 path's tests: its work directory, the part of its
configuration every such nginx shares, and a process started and waited for until it listens."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_TEMP_DIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")


def free_port() -> int:
    """A free loopback port for nginx (it cannot report one it chose)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prelude(work: Path, *, worker_connections: int) -> str:
    """The configuration up to the inside of `http {`: foreground, one process, files kept in
    `work` (made here), no access log."""
    for d in _TEMP_DIRS:
        (work / d).mkdir(parents=True, exist_ok=True)
    return (
        f"daemon off; master_process off; pid {work}/nginx.pid; error_log {work}/error.log;\n"
        f"events {{ worker_connections {worker_connections}; }}\n"
        f"http {{ access_log off; client_body_temp_path {work}/body; "
        f"proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi; "
        f"uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;\n"
    )


def error_log(work: Path) -> str:
    path = work / "error.log"
    return path.read_text() if path.exists() else ""


def start(conf: str, work: Path, port: int) -> subprocess.Popen[bytes]:
    """nginx with configuration `conf` (written to work/nginx.conf), once it accepts on `port`;
    killed, and its error log raised, if it has not within 10 s."""
    path = work / "nginx.conf"
    path.write_text(conf)
    proc = subprocess.Popen(
        [NGINX, "-c", str(path), "-p", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                raise RuntimeError(f"nginx did not start: {error_log(work)}") from None
            time.sleep(0.05)
