"""The socket park (nodeagent.handover.park): the agent's listening sockets outlive the agent's whole
container (keeper and agent, SIGTERM or SIGKILL); new connections wait in the parked accept
queue and the next container's agent answers them. Real processes, real TCP on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.handover.park import ParkLink
from nodeagent.handover.wire import SocketEntry
from tests.unit.agent.handover.test_agent_handover import REPO, Hammer
from tests.unit.agent.handover.test_agent_keeper import _alive, _report

KEEPER = (
    "import sys; from pathlib import Path; from nodeagent.handover import keeper; "
    "sys.exit(keeper.run(sys.argv[2:], agent=[sys.executable, '-m', "
    "'tests.unit.agent.handover.park_child'], park=Path(sys.argv[1])))"
)


def _start_park(path: Path) -> subprocess.Popen[bytes]:
    path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.handover.park", "--socket", str(path)], cwd=REPO
    )
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, "the park exited"
        assert time.monotonic() < deadline, "the park never listened"
        time.sleep(0.02)
    return proc


def _stop_park(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


@pytest.fixture
def park(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "park" / "park.sock"
    proc = _start_park(path)
    try:
        yield path
    finally:
        _stop_park(proc)


def _keeper(park: Path, report: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", KEEPER, str(park), str(report)], cwd=REPO)


def _kill_container(keeper: subprocess.Popen[bytes], agent: int, sig: int) -> None:
    """As a PID namespace ending: the keeper gets `sig`, and nothing of the container stays."""
    keeper.send_signal(sig)
    keeper.wait(30)
    deadline = time.monotonic() + 20
    while _alive(agent):
        if time.monotonic() > deadline:
            os.kill(agent, signal.SIGKILL)
        time.sleep(0.02)


def test_a_parked_socket_queues_connections_for_the_next_taker(park: Path) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    link = ParkLink(park)
    assert link.connect()
    assert link.seed({}) == 0
    link.kept([(SocketEntry("pod", "outbound", "/test/netns"), lsock)])
    link.close()
    lsock.close()
    # Nobody but the park holds it: the handshake completes, the connection waits.
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        client.sendall(b"hello")
        held: dict[tuple[str, str, str], socket.socket] = {}
        taker = ParkLink(park)
        assert taker.seed(held) == 1
        back = held[("pod", "outbound", "/test/netns")]
        back.settimeout(5)
        conn, _ = back.accept()
        assert conn.recv(5) == b"hello"
        conn.close()
        taker.close()
        for s in held.values():
            s.close()
    finally:
        client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_restarted_container_refuses_no_connection(park: Path, tmp_path: Path, sig) -> None:
    first_report, second_report = tmp_path / "first", tmp_path / "second"
    keeper = _keeper(park, first_report)
    second = None
    hammer = None
    try:
        first, port = _report(first_report)
        hammer = Hammer(port)
        hammer.start()
        time.sleep(0.5)
        killed = time.monotonic()
        # SIGTERM: the stand-in agent lets go of its socket as the real one does on the way out.
        _kill_container(keeper, first, sig)
        time.sleep(0.5)  # the kubelet's restart delay: connections wait in the parked queue
        second = _keeper(park, second_report)
        agent, same_port = _report(second_report)
        assert same_port == port
        while not hammer.answers or hammer.answers[-1] != f"pid {agent}".encode():
            assert time.monotonic() - killed < 20, "the restarted agent never answered"
            time.sleep(0.01)
        time.sleep(0.3)
        hammer.stop.set()
        hammer.join(10)
        assert not any("Refused" in f for f in hammer.failures), hammer.failures
        # At most the connection the dead agent had accepted is lost.
        assert len(hammer.failures) <= (0 if sig == signal.SIGTERM else 1), hammer.failures
    finally:
        if hammer is not None:
            hammer.stop.set()
            hammer.join(10)
        for proc in (keeper, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_restarted_park_is_told_everything_again(tmp_path: Path) -> None:
    path = tmp_path / "park" / "park.sock"
    park = _start_park(path)
    report, again = tmp_path / "first", tmp_path / "second"
    keeper = _keeper(path, report)
    second = None
    try:
        first, port = _report(report)
        time.sleep(0.5)
        _stop_park(park)  # its container restarts while the agent runs: all it held is gone
        park = _start_park(path)
        time.sleep(3)  # the keeper notices and tells the new park what it holds
        _kill_container(keeper, first, signal.SIGKILL)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)  # waits, parked
        second = _keeper(path, again)
        agent, same_port = _report(again)
        assert same_port == port
        client.settimeout(10)
        assert client.recv(64) == f"pid {agent}".encode()
        client.close()
    finally:
        for proc in (keeper, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        _stop_park(park)
