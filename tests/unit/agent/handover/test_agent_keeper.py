"""The socket keeper (nodeagent.handover.keeper): an agent killed with SIGKILL loses no listener; new
connections wait in the kept socket's queue and the restarted agent answers them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.unit.agent.handover.test_agent_handover import REPO, Hammer

KEEPER = (
    "import sys; from nodeagent.handover import keeper; "
    "sys.exit(keeper.run(sys.argv[1:], agent=[sys.executable, '-m', "
    "'tests.unit.agent.handover.keeper_child']))"
)


def _report(path: Path, *, not_pid: int = 0, timeout: float = 20) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, port = (int(x) for x in path.read_text().split())
        except (OSError, ValueError):
            pid = port = 0
        if pid and pid != not_pid:
            return pid, port
        time.sleep(0.02)
    raise AssertionError(f"no report in {path}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_a_killed_agent_refuses_no_connection_and_is_back_at_once(tmp_path: Path) -> None:
    report = tmp_path / "agent"
    keeper = subprocess.Popen([sys.executable, "-c", KEEPER, str(report)], cwd=REPO)
    hammer = None
    try:
        first, port = _report(report)
        hammer = Hammer(port)
        hammer.start()
        time.sleep(0.5)
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        second, same_port = _report(report, not_pid=first)
        assert same_port == port
        while not hammer.answers or hammer.answers[-1] != f"pid {second}".encode():
            assert time.monotonic() - killed < 10, "the restarted agent never answered"
            time.sleep(0.01)
        back = time.monotonic() - killed
        time.sleep(0.3)
        hammer.stop.set()
        hammer.join(10)
        # At most the one connection the dead agent had accepted is lost; none is refused.
        assert len(hammer.failures) <= 1, hammer.failures
        assert not any("Refused" in f for f in hammer.failures), hammer.failures
        assert back < 5, back
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(10) == 128 + signal.SIGTERM
        assert not _alive(second)
        # The keeper let go of the socket on the way out: nothing listens there any more.
        c = socket.socket()
        try:
            assert c.connect_ex(("127.0.0.1", port)) != 0
        finally:
            c.close()
    finally:
        if hammer is not None:
            hammer.stop.set()
            hammer.join(10)
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait()


def test_the_agent_is_told_to_stop_when_its_keeper_dies(tmp_path: Path) -> None:
    report = tmp_path / "agent"
    keeper = subprocess.Popen([sys.executable, "-c", KEEPER, str(report)], cwd=REPO)
    try:
        child, _ = _report(report)
        keeper.kill()
        keeper.wait()
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the agent outlived its keeper"
            time.sleep(0.05)
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait()


def test_the_keeper_maps_no_tls_event_loop_or_control_plane_library(tmp_path: Path) -> None:
    """The keeper is a second process on every node beside the agent: it holds sockets and
    restarts the agent, blocking, so it needs no asyncio, ssl (libssl/libcrypto), gRPC or
    cryptography. Importing them cost it ~6 MB of RSS (22 MB -> 16 MB without)."""
    report = tmp_path / "agent"
    keeper = subprocess.Popen([sys.executable, "-c", KEEPER, str(report)], cwd=REPO)
    try:
        _report(report)  # the keeper has started its agent: its imports are done
        maps = Path(f"/proc/{keeper.pid}/maps").read_text()
        mapped = {line.split()[-1].rsplit("/", 1)[-1] for line in maps.splitlines()
                  if len(line.split()) > 5}  # fmt: skip
        heavy = ("_ssl.", "libssl.", "libcrypto.", "_asyncio.", "cygrpc.", "_rust.abi3")
        found = sorted(m for m in mapped if m.startswith(heavy))
        assert not found, f"the keeper maps {found}"
    finally:
        keeper.send_signal(signal.SIGTERM)
        keeper.wait(10)
