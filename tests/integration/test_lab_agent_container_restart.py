"""The agent's container restarted in place with no successor coming (SIGTERM or kill -9 of its
main process, as a crash, an OOM kill or a failed liveness probe does; the lab restarts the
container in its own PID namespace as a kubelet would): no new connection of a meshed pod is
refused, on the client's node nor on the server's. Counted by Debian's `hey
-disable-keepalive` (~50 new connections a second from 10 workers) and a timestamped prober.

Run with NODEMESH_LEAKCHECK_ONLY=acr on a shared machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_lab_agent_handover import (
    APP,
    NGINX,
    RATE,
    Hey,
    Prober,
    agent_logs,
    agent_pid,
    client_netns,
    nm,
    started_at,
    web_ip,
)

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import NODEMESH

pytestmark = [pytest.mark.root, pytest.mark.lab]

PREFIX = "acr"
WORKERS = 10  # hey's workers: while no agent runs, up to this many connections wait at once


class ManyHey(Hey):
    """As Hey (~RATE new connections a second in all), from WORKERS workers at once."""

    def __init__(self, netns: str, url: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "hey", "-disable-keepalive", "-c", str(WORKERS),
             "-q", str(RATE / WORKERS), "-z", "3600s", "-t", "20", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabPaths, str, str]]:
    name = PREFIX + uuid.uuid4().hex[:6]
    tmp = tmp_path_factory.mktemp(PREFIX)
    prefix = tmp / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX.format(prefix=prefix))
    app = tmp / "app.yml"
    app.write_text(APP.format(conf=conf, prefix=prefix))
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0", "--dashboard-port", "0")
        paths = LabPaths(name)
        nm("lab", "apply", "--name", name, "-f", str(app), "--wait", "--timeout", "180")
        netns, ip = client_netns(paths), web_ip(paths)
        assert Prober(netns, ip).one(), "no answer through the mesh before any restart"
        yield paths, netns, ip
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: its sockets are closed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _restart_container(
    paths: LabPaths, netns: str, ip: str, *, node: str, sig: signal.Signals
) -> tuple[dict[str, Any], list[float], float]:
    """Under load, send `sig` to the main process of `node`'s agent container and wait until
    the restarted container's agent serves; what hey and the prober saw."""
    hey = ManyHey(netns, f"http://{ip}/")
    prober = Prober(netns, ip)
    prober.start()
    try:
        settle = time.time() + 60
        while len(prober.results) < 20 or not all(ok for _, ok in prober.results[-20:]):
            assert time.time() < settle, "traffic never steady before the restart"
            time.sleep(0.1)
        keeper = agent_pid(paths, node, keeper=True)
        worker = agent_pid(paths, node)
        os.kill(keeper, sig)
        # "After the kill" starts when the old agent is gone: a signal takes effect when the
        # process next runs, and a connection it accepted a moment after os.kill returned
        # dies with it (seen in CI: one probe begun 1.2 ms after the SIGKILL call failed).
        deadline = time.time() + 90
        while _alive(worker):
            assert time.time() < deadline, f"{node}'s agent outlived the signal"
            time.sleep(0.001)
        hit = time.time()
        while True:
            try:
                successor = agent_pid(paths, node)
                if successor != worker and agent_pid(paths, node, keeper=True) != keeper:
                    break
            except LookupError:
                pass
            assert time.time() < deadline, f"{node}'s agent container was not restarted"
            time.sleep(0.05)
        restarted = started_at(successor)
        while not any(ok and t > restarted + 1 for t, ok in prober.results[-5:]):
            assert time.time() < deadline, "traffic did not come back after the restart"
            time.sleep(0.1)
        time.sleep(2)
    finally:
        prober.halt.set()
        prober.join(30)
        try:
            counted = hey.stop()
        finally:
            hey.kill()
    failed = [t - hit for t, ok in prober.results if not ok]
    slowest = max(end - t for (t, _), end in zip(prober.results, prober.ended, strict=True))
    print(f"\n{sig.name} of {node}'s agent container: new agent {restarted - hit:.2f} s after, "
          f"hey {counted['codes']} errors {counted['errors']} slowest {counted['slowest']} s; "
          f"prober {len(failed)} failed of {len(prober.results)}, slowest {slowest:.2f} s")  # fmt: skip
    assert sum(counted["codes"].values()) > 50, counted["output"]
    return counted, failed, restarted - hit


@pytest.mark.parametrize("node", ["node1", "node2"])
def test_sigterm_of_the_agent_container_refuses_nothing(
    world: tuple[LabPaths, str, str], node: str
) -> None:
    """node1 holds the client (outbound), node2 the server (inbound tunnel)."""
    paths, netns, ip = world
    counted, failed, _ = _restart_container(paths, netns, ip, node=node, sig=signal.SIGTERM)
    assert counted["errors"] == {}, counted["output"]
    assert set(counted["codes"]) == {200}, counted["output"]
    assert failed == [], failed
    # The new agent serves the very sockets the old one listened on.
    assert "taken back from the socket keeper" in agent_logs(paths)


def test_kill_9_of_the_agent_container_refuses_nothing(world: tuple[LabPaths, str, str]) -> None:
    """Only connections the dead agent had accepted can fail (the floor: each of hey's workers
    and the prober has at most one open when the kill comes); none is refused, and none made
    after the kill fails."""
    paths, netns, ip = world
    counted, failed, _ = _restart_container(paths, netns, ip, node="node1", sig=signal.SIGKILL)
    refused = sum(n for e, n in counted["errors"].items() if "refused" in e)
    assert refused == 0, counted["errors"]
    assert sum(counted["errors"].values()) <= WORKERS, counted["output"]
    assert all(t < 0 for t in failed), failed
