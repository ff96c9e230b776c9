"""Hand the agent's listening sockets to a successor on the same node, or take them over.

The old agent (predecessor) listens on a unix socket in its run directory; a new agent
(successor) connects, warms up while the old one keeps serving, then receives every listening
socket by SCM_RIGHTS: each enrolled pod's five (made in the pod's netns), the CNI socket and the
admin port. Both then hold the same kernel sockets, so no accept queue is lost and no new
connection is refused while they switch; the old one stops accepting once the new one says it
serves them all, and drains. The conversation itself is in `handover_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from nodeagent.handover import wire
from nodeagent.handover.fds import HandoverError, Inherited, adopt_fd, bind_seqpacket
from nodeagent.handover.wire import Conversation, HandoverProtocolError, Message, SocketEntry

# Defined in nodeagent.handover.fds (no event loop there, for the keeper); named here as before.
__all__ = ["HandoverError", "HandoverServer", "Inherited", "Predecessor", "adopt_fd",
           "bind_seqpacket"]  # fmt: skip

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 5.0
# Between TAKE and TAKEN the predecessor takes no CNI request; the successor only opens
# listeners on sockets it already has and re-checks rules.
SWITCH_TIMEOUT = 60.0


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def _readable(sock: socket.socket, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(sock.fileno())


async def receive(
    sock: socket.socket, conv: Conversation, *, timeout: float
) -> tuple[Message, list[int]]:
    """The next message from the peer and the fds it carried (the caller owns them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(
                sock, wire.MAX_MESSAGE_BYTES, wire.MAX_FDS_PER_MESSAGE + 1
            )
            break
        except BlockingIOError:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HandoverError(errno.ETIMEDOUT, "the other agent did not answer") from None
            try:
                await _readable(sock, remaining)
            except TimeoutError:
                raise HandoverError(errno.ETIMEDOUT, "the other agent did not answer") from None
    try:
        if not data and not fds:
            raise HandoverError(errno.ECONNRESET, "the other agent hung up")
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise HandoverProtocolError("message or its file descriptors were truncated")
        return conv.received(wire.decode(data, fds=len(fds))), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


async def send(sock: socket.socket, msg: Message, fds: list[int] | None = None) -> None:
    data = wire.encode(msg)
    for _ in range(500):
        try:
            socket.send_fds(sock, [data], fds or [])
            return
        except BlockingIOError:
            await asyncio.sleep(0.01)
    raise HandoverError(errno.ETIMEDOUT, "the other agent does not read")


async def refuse(sock: socket.socket, reason: str) -> None:
    with contextlib.suppress(OSError):
        await send(sock, Message("REFUSED", reason=reason))


# --- what the successor gets ---------------------------------------------------------------


class Predecessor:
    """The successor's line to the agent it replaces."""

    def __init__(self, sock: socket.socket, pid: int, pods: int) -> None:
        self.sock = sock
        self.pid = pid
        self.pods = pods
        self.conv = Conversation("successor")
        self.conv.last = "OFFER"

    @classmethod
    async def find(cls, path: Path, *, timeout: float = HELLO_TIMEOUT) -> Predecessor | None:
        """Connect to a running predecessor; None when there is none (socket absent or dead)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as exc:
            sock.close()
            log.warning("hand-over socket %s: %s; starting without a predecessor", path, exc)
            return None
        sock.setblocking(False)
        try:
            if _peer_uid(sock) != os.geteuid():
                raise HandoverProtocolError(f"{path} belongs to another user")
            await send(sock, Message("HELLO", pid=os.getpid()))
            offer, _ = await receive(sock, Conversation("successor"), timeout=timeout)
        except (OSError, HandoverProtocolError) as exc:
            sock.close()
            log.warning("no hand-over from %s: %s; starting without a predecessor", path, exc)
            return None
        log.info("predecessor agent (pid %d, %d pod(s)) will hand over", offer.pid, offer.pods)
        return cls(sock, offer.pid, offer.pods)

    async def take(self, *, timeout: float = SWITCH_TIMEOUT) -> Inherited:
        got = Inherited()
        try:
            await send(self.sock, Message("TAKE"))
            while True:
                msg, fds = await receive(self.sock, self.conv, timeout=timeout)
                pairs = list(zip(msg.entries, fds, strict=True))
                for i, (entry, fd) in enumerate(pairs):
                    try:
                        got.add(entry, adopt_fd(entry, fd))
                    except HandoverProtocolError:
                        for _, rest in pairs[i + 1 :]:
                            os.close(rest)
                        raise
                if msg.last:
                    return got
        except (OSError, HandoverProtocolError) as exc:
            got.close()
            await self.abort(str(exc))
            raise HandoverError(errno.EPROTO, f"taking over from pid {self.pid}: {exc}") from exc

    async def confirm(self) -> None:
        """Tell the predecessor every socket is served here now: it stops accepting."""
        try:
            await send(self.sock, Message("TAKEN"))
        finally:
            self.sock.close()

    async def abort(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            await send(self.sock, Message("ABORT", reason=reason))
        self.sock.close()


# --- the predecessor's side ----------------------------------------------------------------

Freeze = Callable[[], Awaitable[list[tuple[SocketEntry, socket.socket]]]]


class HandoverServer:
    """Waits for a successor; hands everything over when it asks; resumes if it gives up."""

    def __init__(
        self,
        path: Path,
        *,
        pods: Callable[[], int],
        freeze: Freeze,
        resume: Callable[[], Awaitable[None]],
        handed: Callable[[int], Awaitable[None]],
        warm_timeout: float = 120.0,
    ) -> None:
        self.path = path
        self.pods = pods
        self.freeze = freeze
        self.resume = resume
        self.handed = handed
        self.warm_timeout = warm_timeout
        self.sock: socket.socket | None = None
        self.done = asyncio.Event()
        self.busy = False
        # The pid of a successor that said HELLO and has not finished or given up.
        self.successor: int | None = None
        self._changed = asyncio.Event()

    def start(self) -> None:
        self.sock = bind_seqpacket(self.path)

    async def serve(self) -> None:
        """Take successors one at a time until one has taken over."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        try:
            while not self.done.is_set():
                conn, _ = await loop.sock_accept(self.sock)
                conn.setblocking(False)
                self.busy = True
                try:
                    await self._converse(conn)
                except Exception:
                    log.exception("hand-over failed; serving on")
                finally:
                    conn.close()
                    self.busy = False
                    if not self.done.is_set():
                        self.successor = None
                    self._changed.set()
        finally:
            self.close()

    def close(self) -> None:
        # The path stays: a successor has bound its own there, or the next agent finds it dead.
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def wait(self, timeout: float) -> bool:
        """Until handed over, or `timeout` passed with no hand-over under way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.done.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0 and not self.busy:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(remaining, 1.0))
        return self.done.is_set()

    async def _converse(self, conn: socket.socket) -> None:
        conv = Conversation("predecessor")
        try:
            if _peer_uid(conn) != os.geteuid():
                raise HandoverProtocolError("peer runs as another user")
            hello, _ = await receive(conn, conv, timeout=HELLO_TIMEOUT)
        except HandoverProtocolError as exc:
            log.warning("refused a hand-over request: %s", exc)
            await refuse(conn, str(exc))
            return
        except OSError as exc:
            log.info("hand-over request dropped: %s", exc)
            return
        self.successor = hello.pid
        await send(conn, Message("OFFER", pid=os.getpid(), pods=self.pods()))
        log.info("successor agent pid %d connected; serving on while it warms up", hello.pid)
        try:
            msg, _ = await receive(conn, conv, timeout=self.warm_timeout)
        except HandoverProtocolError as exc:
            log.warning("refused hand-over to pid %d: %s", hello.pid, exc)
            await refuse(conn, str(exc))
            return
        except OSError as exc:
            log.warning("successor pid %d went away before taking over: %s", hello.pid, exc)
            return
        if msg.type == "ABORT":
            log.warning("successor pid %d gave up: %s", hello.pid, msg.reason)
            return
        entries = await self.freeze()
        try:
            parts = wire.chunks([e for e, _ in entries])
            socks = [s for _, s in entries]
            sent = 0
            for i, part in enumerate(parts):
                fds = [s.fileno() for s in socks[sent : sent + len(part)]]
                await send(conn, Message("SOCKETS", entries=part, last=i == len(parts) - 1), fds)
                sent += len(part)
            msg, _ = await receive(conn, conv, timeout=SWITCH_TIMEOUT)
        except (OSError, HandoverProtocolError) as exc:
            log.warning("hand-over to pid %d failed: %s; serving on", hello.pid, exc)
            await refuse(conn, str(exc))
            await self.resume()
            return
        if msg.type == "ABORT":
            log.warning("successor pid %d gave up: %s; serving on", hello.pid, msg.reason)
            await self.resume()
            return
        log.info("handed %d socket(s) over to pid %d", len(entries), hello.pid)
        self.done.set()
        await self.handed(hello.pid)
