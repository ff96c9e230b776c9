"""The socket keeper: a small parent process that holds a copy of every listening socket the
agent serves, so that an agent that crashes (kill -9, OOM) loses no listener.

`nodemesh-agent --keep-sockets ...` becomes this keeper (`python -m nodeagent.handover.keeper`, the
container's main process); it starts the agent itself as its child. The agent sends each socket
it listens on (KEEP, by SCM_RIGHTS) and lets go of it when it stops serving it (DROP). While no
agent runs, the kernel keeps completing handshakes into the kept sockets' accept queues, so
clients wait instead of being refused; the keeper restarts the agent at once, and the new agent
takes the sockets back (TAKE) and accepts what queued meanwhile. Only connections the dead agent
had accepted are lost.

SIGTERM and SIGINT are passed on to the agent; the keeper exits when it does. If the keeper
itself dies, the agent is sent SIGTERM (PR_SET_PDEATHSIG) and serves on until a successor
takes over (nodeagent.handover.sockets).

The keeper dies with its container. With `--socket-park PATH` it also mirrors what it holds to
the socket park beside the container (nodeagent.handover.park), and takes back what is parked
there before it starts the first agent: a restart of the whole container refuses nothing either.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nodeagent.handover import wire
from nodeagent.handover.fds import HandoverError, Inherited, adopt_fd
from nodeagent.handover.park import ParkLink
from nodeagent.handover.slimlog import Log
from nodeagent.handover.wire import HandoverProtocolError, Message, SocketEntry

# The keeper imports no logging, dataclasses, typing, ctypes or argparse: it runs beside every
# agent, and they cost it ~3 MB of RSS (issue 17; tests/unit/agent/test_agent_idle_imports.py).
log = Log(__name__)

ENV = "NODEMESH_KEEPER_FD"
# An agent that keeps dying is restarted ever more slowly, up to this long apart.
MAX_BACKOFF = 10.0
PR_SET_PDEATHSIG = 1


def _send(sock: socket.socket, msg: Message, fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [wire.encode(msg)], list(fds))


def _send_sockets(sock: socket.socket, held: list[tuple[SocketEntry, socket.socket]]) -> None:
    parts = wire.chunks([e for e, _ in held])
    sent = 0
    for i, part in enumerate(parts):
        fds = [s.fileno() for _, s in held[sent : sent + len(part)]]
        _send(sock, Message("SOCKETS", entries=part, last=i == len(parts) - 1), fds)
        sent += len(part)


class Keeper:
    """The keeper's state: the sockets held, by what they are."""

    def __init__(self, park: ParkLink | None = None) -> None:
        self.held: dict[tuple[str, str, str], socket.socket] = {}
        self.park = park

    def handle(self, sock: socket.socket) -> bool:
        """One message from the agent; False when the agent's end is closed."""
        try:
            data, fds, _flags, _ = socket.recv_fds(
                sock, wire.MAX_MESSAGE_BYTES, wire.MAX_FDS_PER_MESSAGE + 1
            )
        except BlockingIOError:
            return True
        if not data and not fds:
            return False
        try:
            msg = wire.decode(data, fds=len(fds))
        except HandoverProtocolError as exc:
            for fd in fds:
                os.close(fd)
            log.warning("keeper: ignored a message from the agent: %s", exc)
            return True
        if msg.type == "KEEP":
            for entry, fd in zip(msg.entries, fds, strict=True):
                old = self.held.pop((entry.role, entry.name, entry.netns), None)
                if old is not None:
                    old.close()
                self.held[(entry.role, entry.name, entry.netns)] = socket.socket(fileno=fd)
            if self.park is not None:
                self.park.kept([(e, self.held[(e.role, e.name, e.netns)]) for e in msg.entries])
        elif msg.type == "DROP":
            for key in [k for k in self.held if not msg.netns or k[2] == msg.netns]:
                self.held.pop(key).close()
            if self.park is not None:
                self.park.dropped(msg.netns)
        elif msg.type == "TAKE":
            held = [(SocketEntry(*key), s) for key, s in self.held.items()]
            _send_sockets(sock, held)
        else:
            for fd in fds:
                os.close(fd)
            log.warning("keeper: unexpected %s from the agent", msg.type)
        return True

    def close(self) -> None:
        for s in self.held.values():
            s.close()
        self.held.clear()
        if self.park is not None:
            self.park.close()


AGENT = (sys.executable, "-m", "nodeagent.main")


class Child:
    """The agent process, started with posix_spawn: what the keeper used of subprocess.Popen
    (poll, send_signal, returncode), without importing subprocess, threading and locale
    (~0.55 MB of the keeper's RSS). Only `pass_fd` is inherited (Python's fds are
    close-on-exec by default); SIGPIPE and SIGXFSZ are reset to their defaults in the child,
    as Popen(restore_signals=True) does."""

    def __init__(self, argv: Sequence[str], *, pass_fd: int, env: dict[str, str]) -> None:
        os.set_inheritable(pass_fd, True)
        self.pid = os.posix_spawn(
            argv[0], list(argv), env, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ)
        )
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere: nothing more to know
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


def run(argv: Sequence[str], *, agent: Sequence[str] = AGENT, park: Path | None = None) -> int:
    """The keeper's main loop: start the agent, hold its sockets, restart it when it dies."""
    keeper = Keeper(ParkLink(park) if park is not None else None)
    if keeper.park is not None:
        # What the previous container's agent listened on, and what queued there since.
        keeper.park.seed(keeper.held)
    child: Child | None = None
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if keeper.park is not None:
            # The agent lets go of its sockets on its way out; the park holds them for the
            # next start of this container.
            keeper.park.stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    backoff = 0.0
    rc = 0
    while not stopping:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child = Child(
            [*agent, *argv],
            pass_fd=theirs.fileno(),
            env={**os.environ, ENV: f"{theirs.fileno()}:{os.getpid()}"},
        )
        theirs.close()
        started = time.monotonic()
        open_ = True
        while child.poll() is None:
            try:
                ready, _, _ = select.select([ours] if open_ else [], [], [], 0.2)
            except InterruptedError:
                continue
            if ready:
                open_ = keeper.handle(ours)
            if keeper.park is not None:
                keeper.park.poll(keeper.held)
        ours.close()
        rc = child.returncode or 0  # set: poll() returned it
        if stopping or rc == 0:
            break
        lived = time.monotonic() - started
        backoff = 0.0 if lived > 60 else min(max(backoff * 2, 0.1), MAX_BACKOFF)
        log.warning(
            "agent pid %d died (%s) after %.1f s; restarting it%s with %d socket(s) kept",
            child.pid,
            f"signal {-rc}" if rc < 0 else f"status {rc}",
            lived,
            f" in {backoff:.1f} s" if backoff >= 1 else "",
            len(keeper.held),
        )
        if backoff >= 1:
            time.sleep(backoff)
    keeper.close()
    return 128 - rc if rc < 0 else rc


def main(argv: Sequence[str]) -> int:
    """`python -m nodeagent.handover.keeper AGENT ARGS...`: AGENT is the nodemesh-agent script (or
    nodeagent.main for the module), run with this Python and ARGS."""
    if not argv:
        print("usage: python -m nodeagent.handover.keeper AGENT [ARGS...]", file=sys.stderr)
        return 2
    agent = AGENT if argv[0] == "nodeagent.main" else (sys.executable, argv[0])
    return run(argv[1:], agent=agent, park=_park_path(argv[1:]))


def _park_path(args: Sequence[str]) -> Path | None:
    """The agent's --socket-park (checked by the agent's own parser)."""
    for i, arg in enumerate(args):
        if arg.startswith("--socket-park="):
            return Path(arg.partition("=")[2])
        if arg == "--socket-park" and i + 1 < len(args):
            return Path(args[i + 1])
    return None


class KeeperLink:
    """The agent's end: tell the keeper what to hold, take back what it holds."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def from_env(cls) -> KeeperLink | None:
        value = os.environ.pop(ENV, None)
        if value is None:
            return None
        fd, _, keeper_pid = value.partition(":")
        # The keeper's death must not leave this agent running unsupervised. (ctypes imported
        # here: this runs in the agent, which has it loaded; the keeper does not need it.)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if keeper_pid and os.getppid() != int(keeper_pid):
            os.kill(os.getpid(), signal.SIGTERM)  # it died before we asked to be told
        sock = socket.socket(fileno=int(fd))
        sock.settimeout(5.0)
        return cls(sock)

    def keep(self, entries: list[tuple[SocketEntry, socket.socket]]) -> None:
        try:
            for part_start in range(0, len(entries), wire.MAX_FDS_PER_MESSAGE):
                part = entries[part_start : part_start + wire.MAX_FDS_PER_MESSAGE]
                _send(
                    self.sock,
                    Message("KEEP", entries=tuple(e for e, _ in part)),
                    [s.fileno() for _, s in part],
                )
        except OSError as exc:
            log.warning("socket keeper: %s", exc)

    def drop(self, netns: str = "") -> None:
        with contextlib.suppress(OSError):
            _send(self.sock, Message("DROP", netns=netns))

    def take(self) -> Inherited:
        """Blocking: every socket the keeper holds (none after a clean start)."""
        got = Inherited()
        try:
            _send(self.sock, Message("TAKE"))
            while True:
                data, fds, _flags, _ = socket.recv_fds(
                    self.sock, wire.MAX_MESSAGE_BYTES, wire.MAX_FDS_PER_MESSAGE + 1
                )
                msg = wire.decode(data, fds=len(fds))
                if msg.type != "SOCKETS":
                    for fd in fds:
                        os.close(fd)
                    raise HandoverProtocolError(f"{msg.type} from the keeper, not SOCKETS")
                for entry, fd in zip(msg.entries, fds, strict=True):
                    got.add(entry, adopt_fd(entry, fd))
                if msg.last:
                    return got
        except (OSError, HandoverProtocolError) as exc:
            got.close()
            raise HandoverError(0, f"taking sockets back from the keeper: {exc}") from exc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
