"""Handing listening sockets from one agent process to another (nodeagent.handover.sockets): over a
real unix socket between two processes, with a client connecting all through the switch."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nodeagent.handover import wire
from nodeagent.handover.sockets import HandoverError, Predecessor
from nodeagent.handover.wire import Conversation, HandoverProtocolError, Message, SocketEntry

REPO = Path(__file__).resolve().parents[4]


def _start_old(path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.agent.handover.handover_peer", str(path), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.settimeout(10)
        data = b""
        while chunk := c.recv(16):
            data += chunk
        return data


def _read_all(waiting: list[socket.socket]) -> list[bytes]:
    """The first answer on each connection, each then closed."""
    out = []
    for c in waiting:
        c.settimeout(10)
        out.append(c.recv(16))
        c.close()
    return out


class Hammer(threading.Thread):
    """New connections back to back, each answer (or failure) recorded in order."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.answers: list[bytes] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.answers.append(_ask(self.port))
            except OSError as exc:
                self.failures.append(repr(exc))


async def _serve_new(sock: socket.socket) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"new")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, sock=sock)


async def test_a_client_connecting_through_the_switch_is_always_answered(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    old, port = _start_old(path)
    hammer = Hammer(port)
    server = None
    try:
        hammer.start()
        await asyncio.sleep(0.3)
        pred = await Predecessor.find(path)
        assert pred is not None and pred.pid == old.pid and pred.pods == 1
        inherited = await pred.take()
        socks = inherited.pods.pop("/test/netns")
        assert set(socks) == {"outbound"}
        server = await _serve_new(socks["outbound"])
        await pred.confirm()
        assert old.stdout is not None
        line = await asyncio.to_thread(old.stdout.readline)
        assert line.strip() == f"handed {os.getpid()}"
        handed_at = len(hammer.answers)
        await asyncio.wait_for(asyncio.to_thread(old.wait), 10)
        await asyncio.sleep(0.3)
    finally:
        hammer.stop.set()
        await asyncio.to_thread(hammer.join, 10)
        _stop(old)
        if server is not None:
            server.close()
    assert hammer.failures == []
    assert set(hammer.answers) == {b"old", b"new"}
    # Once the old process has let go (and exited), only the new one answers.
    assert set(hammer.answers[handed_at + 1 :]) == {b"new"}


async def test_connections_waiting_in_the_accept_queue_are_served_by_the_successor(
    tmp_path: Path,
) -> None:
    path = tmp_path / "handover.sock"
    old, port = _start_old(path, "--no-accept")
    try:
        # The old agent accepts nothing: these wait in the kernel's accept queue.
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        pred = await Predecessor.find(path)
        assert pred is not None
        inherited = await pred.take()
        server = await _serve_new(inherited.pods.pop("/test/netns")["outbound"])
        await pred.confirm()
        await asyncio.wait_for(asyncio.to_thread(old.wait), 10)

        assert await asyncio.to_thread(_read_all, waiting) == [b"new"] * 20
        server.close()
    finally:
        _stop(old)


async def test_the_router_port_and_its_waiting_connections_go_to_the_successor(
    tmp_path: Path,
) -> None:
    """Router mode's node port travels like a pod's listeners: a client that connected while the
    agents switch is answered by the new one, never refused."""
    path = tmp_path / "handover.sock"
    old, port = _start_old(path, "--no-accept", "--role", "router")
    try:
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        pred = await Predecessor.find(path)
        assert pred is not None
        inherited = await pred.take()
        assert inherited.router is not None and inherited.count() == 1
        server = await _serve_new(inherited.router)
        await pred.confirm()
        await asyncio.wait_for(asyncio.to_thread(old.wait), 10)

        assert await asyncio.to_thread(_read_all, waiting) == [b"new"] * 5
        server.close()
    finally:
        _stop(old)


async def test_a_foreign_message_is_refused_and_the_old_agent_serves_on(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    old, port = _start_old(path)
    try:
        for junk in (b"GET / HTTP/1.1\r\n\r\n", json.dumps({"magic": "x"}).encode()):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.settimeout(10)
            c.connect(str(path))
            c.send(junk)
            reply = json.loads(c.recv(4096))
            c.close()
            assert reply["type"] == "REFUSED"
            assert "not a nodemesh hand-over message" in reply["reason"] or (
                "not a hand-over message" in reply["reason"]
            )
        # A successor speaking another version is told which one this agent speaks.
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.settimeout(10)
        c.connect(str(path))
        c.send(json.dumps({"magic": wire.MAGIC, "version": 99, "type": "HELLO", "pid": 1}).encode())
        reply = json.loads(c.recv(4096))
        c.close()
        assert reply["type"] == "REFUSED" and "version 99" in reply["reason"]
        assert await asyncio.to_thread(_ask, port) == b"old"
        assert old.poll() is None
        # ... and still hands over to a real successor afterwards.
        pred = await Predecessor.find(path)
        assert pred is not None
        await pred.abort("changed my mind")
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(_ask, port) == b"old"
    finally:
        _stop(old)


async def test_no_predecessor_when_the_socket_is_absent_or_dead(tmp_path: Path) -> None:
    assert await Predecessor.find(tmp_path / "none.sock") is None
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(dead))
    s.close()  # a file left behind by an agent killed with SIGKILL
    started = time.monotonic()
    assert await Predecessor.find(dead) is None
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("entries", "fd_kinds", "problem"),
    [
        (
            [SocketEntry("pod", "outbound", "/n"), SocketEntry("pod", "inbound", "/n")],
            ["tcp"],
            "names 2 socket(s) but 1 file descriptor(s)",
        ),
        ([SocketEntry("pod", "outbound", "/n")], ["file"], "not a socket"),
        ([SocketEntry("pod", "dns-udp", "/n")], ["tcp"], "not the one named"),
        ([SocketEntry("cni", "cni")], ["tcp"], "not the one named"),
    ],
)
async def test_the_successor_refuses_sockets_that_are_not_what_they_claim(
    tmp_path: Path, entries: list[SocketEntry], fd_kinds: list[str], problem: str
) -> None:
    made: list[socket.socket] = []
    files: list[int] = []
    fds = []
    for kind in fd_kinds:
        if kind == "tcp":
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            made.append(s)
            fds.append(s.fileno())
        else:
            f = tmp_path / "plain-file"
            f.write_text("x")
            fd = os.open(f, os.O_RDONLY)
            files.append(fd)
            fds.append(fd)
    body = json.loads(wire.encode(Message("SOCKETS", entries=tuple(entries), last=True)))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    pred = Predecessor(ours, pid=1, pods=1)
    socket.send_fds(theirs, [json.dumps(body).encode()], fds)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(HandoverError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        await pred.take(timeout=5)
    # The successor told the old agent it gave up, and kept none of the fds it was sent.
    got = []
    while True:
        try:
            packet = theirs.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        if not packet:
            break  # the successor hung up after saying why
        got.append(json.loads(packet))
    assert [m["type"] for m in got] == ["TAKE", "ABORT"]
    assert problem.split("(")[0] in got[1]["reason"]
    assert len(os.listdir("/proc/self/fd")) <= open_before
    theirs.close()
    for s in made:
        s.close()
    for fd in files:
        os.close(fd)


@pytest.mark.parametrize(
    ("data", "fds", "problem"),
    [
        (b"\x00\x01garbage", 0, "not a hand-over message"),
        (b'{"magic": "other"}', 0, "not a nodemesh hand-over message"),
        (b'{"magic": "nodemesh-handover", "version": 2, "type": "HELLO"}', 0, "version 2"),
        (b'{"magic": "nodemesh-handover", "version": 1, "type": "BOOT"}', 0, "'BOOT'"),
        (b'{"magic": "nodemesh-handover", "version": 1, "type": "HELLO"}', 0, "missing"),
        (
            b'{"magic": "nodemesh-handover", "version": 1, "type": "HELLO", "pid": -3}',
            0,
            "non-negative",
        ),
        (
            b'{"magic": "nodemesh-handover", "version": 1, "type": "TAKE", "pid": 3}',
            0,
            "unexpected fields ['pid']",
        ),
        (b'{"magic": "nodemesh-handover", "version": 1, "type": "TAKE"}', 2, "0 socket(s) but 2"),
        (
            b'{"magic": "nodemesh-handover", "version": 1, "type": "SOCKETS", "last": true,'
            b' "entries": [{"role": "pod", "name": "ssh", "netns": "/n"}]}',
            1,
            "a pod socket needs one of",
        ),
    ],
)
def test_malformed_messages_are_named(data: bytes, fds: int, problem: str) -> None:
    with pytest.raises(HandoverProtocolError) as err:
        wire.decode(data, fds=fds)
    assert problem in str(err.value)


def test_out_of_turn_messages_are_refused() -> None:
    conv = Conversation("predecessor")
    with pytest.raises(HandoverProtocolError, match="TAKE first: expected HELLO"):
        conv.received(Message("TAKE"))
    conv.received(Message("HELLO", pid=5))
    with pytest.raises(HandoverProtocolError, match="SOCKETS after HELLO"):
        conv.received(Message("SOCKETS"))
    with pytest.raises(HandoverProtocolError, match="refused the hand-over: no"):
        conv.received(Message("REFUSED", reason="no"))


def test_many_sockets_travel_in_several_messages() -> None:
    entries = [SocketEntry("pod", "outbound", f"/n/{i}") for i in range(450)]
    parts = wire.chunks(entries)
    assert [len(p) for p in parts] == [200, 200, 50]
    for part in parts:
        msg = wire.decode(wire.encode(Message("SOCKETS", entries=part)), fds=len(part))
        assert msg.entries == part
