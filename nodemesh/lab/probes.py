"""Readiness probes as the kubelet runs them: from the node's network namespace to the pod IP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

from nodemesh.netns import socket_in_netns


def probe_port(probe_port: int | str, container: dict[str, Any]) -> int:
    if isinstance(probe_port, int):
        return probe_port
    if probe_port.isdigit():
        return int(probe_port)
    for p in container.get("ports") or []:
        if p.get("name") == probe_port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {probe_port!r} names no containerPort")


async def _connect(netns: str, ip: str, port: int, timeout: float) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = await loop.run_in_executor(None, socket_in_netns, netns)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def run_probe(
    probe: dict[str, Any],
    *,
    container: dict[str, Any],
    node_netns: str,
    pod_netns: str,
    pod_ip: str,
    exec_in: Sequence[str] | None = None,
) -> bool:
    """One probe attempt; True on success. Never raises for a failing target. An exec probe runs
    inside the container when `exec_in` (the command that enters it) is given, as the kubelet's
    do: never with the host's view and privileges."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "tcpSocket" in probe:
            port = probe_port(probe["tcpSocket"]["port"], container)
            sock = await _connect(node_netns, pod_ip, port, timeout)
            sock.close()
            return True
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = probe_port(get["port"], container)
            sock = await _connect(node_netns, pod_ip, port, timeout)
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                path = get.get("path", "/")
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {pod_ip}:{port}\r\n"
                    "User-Agent: kube-probe/lab\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), timeout)
            finally:
                writer.close()
            parts = line.split()
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
        if "exec" in probe:
            cmd = [str(a) for a in probe["exec"].get("command", [])]
            enter = list(exec_in) if exec_in is not None else ["ip", "netns", "exec", pod_netns]
            proc = await asyncio.create_subprocess_exec(
                *enter, *cmd,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                return await asyncio.wait_for(proc.wait(), timeout) == 0
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return False
    except (OSError, TimeoutError, ValueError):
        return False
    return False
