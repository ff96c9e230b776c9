"""The unix socket nodemesh-cni talks to: one request and one reply per connection.

The socket is bound under a temporary name, made 0600, then renamed into place, so there is no
moment when another user could connect, and a stale socket from a previous agent is replaced
atomically.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

from nodemesh_cni.protocol import (
    MAX_FRAME_BYTES,
    ProtocolError,
    Reply,
    Request,
    decode_request,
    encode_reply,
)

from nodeagent.enrol.enrolment import AddRequest, Enroller, Outcome
from nodeagent.observe.metrics import CNI_ADD_SECONDS, CNI_REQUESTS
from nodemesh.unixsock import bind_unix

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


class CniServer:
    def __init__(self, enroller: Enroller, path: Path) -> None:
        self.enroller = enroller
        self.path = path
        self.server: asyncio.Server | None = None
        # The listening socket itself; the server runs on a duplicate of it so that pausing
        # (for a hand-over) stops accepting while requests wait in its queue.
        self.sock: socket.socket | None = None
        # The socket file we serve, by device and inode: removed on the way out only if the
        # path still names it (a successor may have put its own in place).
        self._file: tuple[int, int] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve `sock` (taken over from the previous agent) or a socket bound at the path."""
        self.sock = sock if sock is not None else bind_unix(self.path)
        self._file = _file_id(self.path)
        await self.resume()

    async def resume(self) -> None:
        if self.server is None and self.sock is not None:
            self.server = await asyncio.start_unix_server(
                self._serve, sock=self.sock.dup(), limit=MAX_FRAME_BYTES
            )

    async def pause(self) -> None:
        """Stop taking requests (they queue) and wait for those being answered."""
        if self.server is not None:
            self.server.close()
            self.server = None
        await self._idle.wait()

    def release(self) -> None:
        """A successor serves the socket now: let go of it, leave the path alone."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def stop(self) -> None:
        """Stop taking requests: the plugin then fails ADD with "try again later"."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.sock is None:
            return  # handed over: the path is the successor's
        self.sock.close()
        self.sock = None
        try:
            if self._file is not None and _file_id(self.path) == self._file:
                self.path.unlink()
        except OSError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._in_flight += 1
        self._idle.clear()
        try:
            try:
                frame = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            writer.write(encode_reply(await self._answer(frame)))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.debug("cni connection: %s", exc)
        finally:
            writer.close()
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _answer(self, frame: bytes) -> Reply:
        try:
            request = decode_request(frame)
        except ProtocolError as exc:
            CNI_REQUESTS.labels("invalid", "error").inc()
            return Reply(id=exc.request_id or "", status="error", message=str(exc))
        started = time.monotonic()
        try:
            outcome = await self._dispatch(request)
        except Exception as exc:
            log.exception("cni %s failed", request.command)
            outcome = Outcome("error", f"agent error: {exc}")
        CNI_REQUESTS.labels(request.command, outcome.status).inc()
        if request.command == "add":
            CNI_ADD_SECONDS.observe(time.monotonic() - started)
        return Reply.to(
            request, status=outcome.status, message=outcome.message, meshed=outcome.meshed
        )

    async def _dispatch(self, request: Request) -> Outcome:
        e, pod = self.enroller, request.pod
        if request.command == "status":
            return e.status()
        if request.command == "gc":
            return await e.gc({a.container_id for a in request.attachments})
        assert pod is not None
        if request.command == "add":
            return await e.add(
                AddRequest(
                    container_id=pod.container_id,
                    ifname=pod.ifname,
                    netns=pod.netns,
                    namespace=pod.namespace,
                    name=pod.name,
                    uid=pod.uid,
                    ips=tuple(ip.ip for ip in pod.ips if "." in ip.ip),
                    gateways=tuple(ip.gateway for ip in pod.ips if "." in ip.gateway),
                )
            )
        if request.command == "del":
            return await e.delete(pod.container_id, pod.netns)
        return await e.check(pod.container_id, pod.namespace, pod.name)
