"""The socket park: holds the agent's listening sockets from outside the agent's container, so
that a restart of that container (SIGTERM, kill -9, OOM, a failed liveness probe) refuses no
new connection of a meshed pod.

The keeper (nodeagent.handover.keeper, PID 1 of the agent container) holds a copy of each listening
socket, but it dies with its container. The park runs in a sibling container of the same
DaemonSet pod (`python -m nodeagent.handover.park --socket PATH`, PATH on an emptyDir both
containers mount): the keeper mirrors to it every socket it is given (KEEP) and let go of
(DROP), and a keeper starting in a restarted container takes them back (TAKE) before it starts
the agent. Meanwhile the kernel completes handshakes into the parked sockets' accept queues:
clients wait instead of being refused. The messages are the hand-over protocol's
(nodeagent.handover.wire). The park is per pod: a new pod of a rollout starts with an empty
one and gets its sockets from the old agent (nodeagent.handover.sockets).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nodeagent.handover import wire
from nodeagent.handover.fds import HandoverError, bind_seqpacket
from nodeagent.handover.slimlog import Log
from nodeagent.handover.wire import HandoverProtocolError, Message, SocketEntry

# Not `from typing import TYPE_CHECKING`: the keeper imports this module (for ParkLink) and
# would load `typing` for it; type checkers read any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from nodeagent.handover.keeper import Keeper

log = Log(__name__)

# How often a keeper without a park tries again to reach it (the park's container may start
# after the agent's, or be restarted).
RETRY_SECONDS = 1.0
LINK_TIMEOUT = 5.0


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def serve(path: Path, *, stopping: list[int]) -> None:
    """Hold what the connected keeper parks until `stopping` is non-empty (a signal came).

    One keeper at a time: a new connection (the keeper of a restarted container) replaces the
    old one, whose sockets stay parked."""
    # Imported here: the keeper imports this module for ParkLink.
    from nodeagent.handover.keeper import Keeper

    held = Keeper()
    listener = bind_seqpacket(path)
    conn: socket.socket | None = None
    log.info("socket park listening on %s", path)
    try:
        while not stopping:
            watched = [listener] if conn is None else [listener, conn]
            try:
                ready, _, _ = select.select(watched, [], [], 1.0)
            except InterruptedError:
                continue
            if conn is not None and conn in ready and not _read(held, conn):
                conn.close()
                conn = None
                log.info("keeper gone; holding %d socket(s) for the next", len(held.held))
            if listener in ready:
                with contextlib.suppress(BlockingIOError):
                    new, _ = listener.accept()
                    if peer_uid(new) != os.geteuid():
                        log.warning("socket park: refused a peer running as another user")
                        new.close()
                        continue
                    if conn is not None:
                        # What the old keeper sent before it went counts: read it all first.
                        while select.select([conn], [], [], 0)[0] and _read(held, conn):
                            pass
                        conn.close()
                    conn = new
                    log.info("keeper connected; %d socket(s) parked", len(held.held))
    finally:
        if conn is not None:
            conn.close()
        listener.close()
        log.info("socket park stopping; letting go of %d socket(s)", len(held.held))
        held.close()


def _read(held: Keeper, conn: socket.socket) -> bool:
    """One message from the keeper; False when its end is closed (or broken)."""
    try:
        return held.handle(conn)
    except OSError as exc:
        log.warning("socket park: %s", exc)
        return False


Key = tuple[str, str, str]  # (role, name, netns), as the keeper holds its sockets


class ParkLink:
    """The keeper's line to the park: take back what is parked before the first agent starts,
    then mirror each KEEP and DROP. A park that is not there yet (its container starts after
    the agent's) or went away is reached again later and told the whole set."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        # Set when the agent's container is stopping: the agent then lets go of its sockets,
        # but the park holds them for the container's next start.
        self.stopping = False
        self._next_try = 0.0

    def connect(self) -> bool:
        """Connect if not connected (at most once per RETRY_SECONDS); True when connected."""
        if self.sock is not None:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + RETRY_SECONDS
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(self.path))
            if peer_uid(sock) != os.geteuid():
                raise HandoverProtocolError(f"{self.path} belongs to another user")
        except (OSError, HandoverProtocolError) as exc:
            sock.close()
            if not isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
                log.warning("socket park %s: %s", self.path, exc)
            return False
        sock.settimeout(LINK_TIMEOUT)
        self.sock = sock
        return True

    def seed(self, held: dict[Key, socket.socket]) -> int:
        """Before the first agent starts: add every parked socket to `held`; how many."""
        try:
            parked = self._take()
        except HandoverError as exc:
            log.warning("%s; the agent starts without them", exc)
            return 0
        for entry, fd in parked:
            old = held.pop((entry.role, entry.name, entry.netns), None)
            if old is not None:
                old.close()
            held[(entry.role, entry.name, entry.netns)] = socket.socket(fileno=fd)
        if parked:
            log.info("took %d socket(s) back from the socket park", len(parked))
        return len(parked)

    def _take(self) -> list[tuple[SocketEntry, int]]:
        if not self.connect():
            return []
        assert self.sock is not None
        got: list[tuple[SocketEntry, int]] = []
        try:
            socket.send_fds(self.sock, [wire.encode(Message("TAKE"))], [])
            while True:
                data, fds, _flags, _ = socket.recv_fds(
                    self.sock, wire.MAX_MESSAGE_BYTES, wire.MAX_FDS_PER_MESSAGE + 1
                )
                try:
                    if not data:
                        raise HandoverProtocolError("the park hung up")
                    msg = wire.decode(data, fds=len(fds))
                    if msg.type != "SOCKETS":
                        raise HandoverProtocolError(f"{msg.type} from the park, not SOCKETS")
                except HandoverProtocolError:
                    for fd in fds:
                        os.close(fd)
                    raise
                got += list(zip(msg.entries, fds, strict=True))
                if msg.last:
                    return got
        except (OSError, HandoverProtocolError) as exc:
            for _, fd in got:
                os.close(fd)
            self.close()
            raise HandoverError(0, f"taking sockets back from the socket park: {exc}") from exc

    def kept(self, entries: Sequence[tuple[SocketEntry, socket.socket]]) -> None:
        for start in range(0, len(entries), wire.MAX_FDS_PER_MESSAGE):
            part = entries[start : start + wire.MAX_FDS_PER_MESSAGE]
            self._send(
                Message("KEEP", entries=tuple(e for e, _ in part)), [s.fileno() for _, s in part]
            )

    def dropped(self, netns: str) -> None:
        if not self.stopping:
            self._send(Message("DROP", netns=netns))

    def poll(self, held: dict[Key, socket.socket]) -> None:
        """Reach a park that was not there (or was restarted): it holds exactly `held` from
        now on."""
        if self.sock is not None and self._hung_up():
            log.warning("the socket park went away; will reach it again")
            self.close()
        if self.sock is None and not self.stopping and self.connect():
            self._send(Message("DROP", netns=""))
            self.kept([(SocketEntry(*key), s) for key, s in held.items()])
            log.info("socket park reached; %d socket(s) parked", len(held))

    def _hung_up(self) -> bool:
        assert self.sock is not None
        ready, _, _ = select.select([self.sock], [], [], 0)
        if not ready:
            return False
        try:
            # The park never speaks unasked: what is readable is its end closing.
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send(self, msg: Message, fds: Sequence[int] = ()) -> None:
        if self.sock is None:
            return
        try:
            socket.send_fds(self.sock, [wire.encode(msg)], list(fds))
        except OSError as exc:
            log.warning("socket park: %s; will reach it again", exc)
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here: the keeper imports this module for ParkLink and needs neither.
    import argparse
    import logging

    p = argparse.ArgumentParser(
        prog="python -m nodeagent.handover.park",
        description="hold the node agent's listening sockets while its container restarts",
    )
    p.add_argument("--socket", required=True, help="unix socket path (on a volume shared "
                   "with the agent's container; the agent's --socket-park)")  # fmt: skip
    ns = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    path = Path(ns.socket)
    if not path.is_absolute():
        print(f"--socket {ns.socket}: must be an absolute path", file=sys.stderr)
        return 2
    stopping: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        serve(path, stopping=stopping)
    except OSError as exc:
        print(f"socket park {path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
