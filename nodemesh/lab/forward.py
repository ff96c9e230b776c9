"""Localhost port-forwards into the lab: a listener in the host's namespace whose connections are
relayed to a ready endpoint of a Service, over a socket made in that endpoint's node namespace."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
import socket
from typing import TYPE_CHECKING

from nodemesh.lab import objects
from nodemesh.lab.config import Forward
from nodemesh.netns import socket_in_netns

if TYPE_CHECKING:
    from nodemesh.lab.supervisor import Supervisor

log = logging.getLogger(__name__)


class ForwardBindError(OSError):
    pass


class Forwarder:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.servers: list[tuple[Forward, asyncio.Server]] = []

    async def start(self, forwards: list[Forward]) -> None:
        for fwd in forwards:
            try:
                server = await asyncio.start_server(
                    functools.partial(self._relay, fwd), fwd.host, fwd.local_port
                )
            except OSError as e:
                raise ForwardBindError(
                    e.errno, f"cannot listen on {fwd.host}:{fwd.local_port}: {e.strerror}"
                ) from e
            if fwd.local_port == 0:  # "any free port": record the one the kernel chose
                port = server.sockets[0].getsockname()[1]
                fwd = Forward(fwd.host, port, fwd.namespace, fwd.service, fwd.port)
            self.servers.append((fwd, server))

    def describe(self) -> list[dict[str, object]]:
        return [dataclasses.asdict(f) for f, _ in self.servers]

    def _pick(self, fwd: Forward) -> tuple[str, str, int] | None:
        """(node netns, pod ip, target port) of a ready endpoint, or None."""
        svc = next(
            (
                s
                for s in self.sup.store.of_kind("Service", fwd.namespace)
                if s["metadata"]["name"] == fwd.service
            ),
            None,
        )
        if svc is None:
            return None
        port = next((p for p in svc["spec"]["ports"] if p["port"] == fwd.port), None)
        if port is None:
            return None
        pods = [
            p
            for p in objects.pods_for_port(svc, self.sup.store.of_kind("Pod", fwd.namespace))
            if objects.is_ready(p) and p.get("status", {}).get("podIP")
        ]
        if not pods:
            return None
        pod = random.choice(pods)
        target = objects.resolve_target_port(port, [pod])
        return self.sup.paths.node_netns(pod["spec"]["nodeName"]), pod["status"]["podIP"], target

    async def _relay(
        self, fwd: Forward, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        picked = self._pick(fwd)
        if picked is None:
            log.warning("forward %s: no ready endpoint", fwd)
            writer.close()
            return
        netns, ip, port = picked
        loop = asyncio.get_running_loop()
        sock: socket.socket = await loop.run_in_executor(None, socket_in_netns, netns)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (ip, port)), 5)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except (OSError, TimeoutError) as e:
            log.warning("forward %s: connect to %s:%d failed: %s", fwd, ip, port, e)
            sock.close()
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()
            up_writer.close()

    async def stop(self) -> None:
        for _, server in self.servers:
            server.close()
        for _, server in self.servers:
            await server.wait_closed()
        self.servers.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
