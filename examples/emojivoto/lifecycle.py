"""What every emojivoto process does the same way: settings from env, logging, start, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

# Where to listen. Kubernetes wants 0.0.0.0; tests set 127.0.0.1 so nothing leaves loopback.
BIND_ADDRESS_ENV = "BIND_ADDRESS"


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not an integer") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a number") from None


def bind_address() -> str:
    return env_str(BIND_ADDRESS_ENV, "0.0.0.0")


def configure_logging(service: str) -> logging.Logger:
    """Log lines to stdout (the container runtime's and the lab's log), flushed per line."""
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s {service} %(message)s",
    )
    # uvicorn narrates its own start and stop; our one start line says what matters.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    return logging.getLogger(f"emojivoto.{service}")


def pod_context() -> str:
    """The Downward-API facts set on the pod, for log lines (empty outside Kubernetes)."""
    parts = []
    for env, key in (
        ("POD_NAMESPACE", "ns"),
        ("POD_NAME", "pod"),
        ("POD_IP", "ip"),
        ("NODE_NAME", "node"),
    ):
        value = os.environ.get(env)
        if value:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so servers drain and the process exits with status 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio only turns Nagle off (TCP_NODELAY) on accepted sockets
    # whose proto says TCP; without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listening_line(what: str, host: str, port: int) -> str:
    """The start line; tests and the lab read `listening on HOST:PORT` from it."""
    context = pod_context()
    return f"{what} listening on {host}:{port}" + (f" ({context})" if context else "")
