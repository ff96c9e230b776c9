"""Transparent inbound connections in a real pod netns: with the mangle rules and policy route
in place, a socket from `inbound_socket` reaches the pod's app *as the client's IP* and gets the
app's replies; applying is idempotent; removing leaves no chain, rule or route behind."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from nodeagent.proxy.podnetns import inbound_socket
from nodeagent.rules import transparent
from nodemesh.netns import socket_in_netns
from tests import leakcheck

pytestmark = pytest.mark.root
PLAN = transparent.TransparentPlan()


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def pod_and_client() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    pod, cli = f"nmt-tp-{tag}-pod", f"nmt-tp-{tag}-cli"
    before = leakcheck.snapshot()
    try:
        sh("ip", "netns", "add", pod)
        sh("ip", "netns", "add", cli)
        sh("ip", "link", "add", "tp0", "netns", pod, "type", "veth", "peer", "name", "tp1",
           "netns", cli)  # fmt: skip
        sh("ip", "-n", pod, "addr", "add", "10.78.0.2/24", "dev", "tp0")
        sh("ip", "-n", cli, "addr", "add", "10.78.0.3/24", "dev", "tp1")
        for ns, dev in ((pod, "tp0"), (cli, "tp1")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield pod, cli
    finally:
        for ns in (pod, cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        leakcheck.assert_no_leaks(before, leakcheck.snapshot(), only=lambda n: tag in n)


def test_app_sees_the_client_ip_and_rules_are_idempotent_and_removable(
    pod_and_client: tuple[str, str],
) -> None:
    pod, _cli = pod_and_client
    assert transparent.problems(pod, PLAN)  # nothing there yet
    assert transparent.apply(pod, PLAN)  # reports what it fixed
    assert transparent.problems(pod, PLAN) == []
    mangle = sh("ip", "netns", "exec", pod, "iptables-legacy-save", "-t", "mangle")
    for _ in range(5):
        assert transparent.apply(pod, PLAN) == []
    assert sh("ip", "netns", "exec", pod, "iptables-legacy-save", "-t", "mangle").count(
        "-A "
    ) == mangle.count("-A ")

    srv = socket_in_netns(pod)
    srv.bind(("10.78.0.2", 8080))
    srv.listen()
    seen: list[str] = []

    def serve() -> None:
        conn, addr = srv.accept()
        seen.append(addr[0])
        conn.sendall(b"hello " + conn.recv(16))
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        s = inbound_socket(pod, client_ip="10.78.0.3")
        s.setblocking(True)
        s.settimeout(3)
        s.connect(("10.78.0.2", 8080))
        s.sendall(b"x")
        assert s.recv(16) == b"hello x"
        s.close()
    finally:
        t.join(5)
        srv.close()
    assert seen == ["10.78.0.3"]

    transparent.remove(pod, PLAN)
    assert "NODEMESH" not in sh("ip", "netns", "exec", pod, "iptables-legacy-save", "-t", "mangle")
    assert f"lookup {PLAN.table}" not in sh("ip", "-n", pod, "rule", "show")
    assert sh("ip", "-n", pod, "route", "show", "table", str(PLAN.table)).strip() == ""
    transparent.remove(pod, PLAN)  # again: nothing to do, no error
