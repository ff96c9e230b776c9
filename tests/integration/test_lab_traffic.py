"""What a meshed pod's traffic can and cannot do around the agent, in a one-node lab (root):
IPv6 link-local never carries plaintext past the mesh, strict pods drop inbound UDP except
listed ports, and the kubelet's probes see exactly what they would see without the mesh.

Layout (all on node1, so the wire to watch is the node's bridge, not the underlay):
`trfstrict` (meshed, strict) has `server` (HTTP on [::]:8080 with an httpGet readiness probe,
UDP echo on 9999 and 5353, the latter listed in nodemesh.io/allow-inbound-udp-ports);
`trfmesh` (meshed) has `client` and `closed`; `trfplain` (not meshed) has `outsider`,
`plainserver` (the same as `server`) and `closed`. Both `closed` pods have a tcpSocket readiness
probe on 7070 where nothing listens. The apps are tests/integration/traffic_lab_apps.py.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodemesh.lab.paths import LabPaths
from nodemesh.netns import socket_in_netns
from tests.integration.labkit import NODEMESH, nm

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a lab"),
]

APPS = str(Path(__file__).resolve().parent / "traffic_lab_apps.py")
ETH_P_ALL = 0x0003


def deploy(ns: str, name: str, containers: str, *, annotations: str = "{}") -> str:
    return f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}, annotations: {annotations}}}
    spec:
      containers:
{containers}"""


SLEEPER = "      - {name: main, command: [sleep, '3600']}\n"
SERVER = f"""      - name: http
        command: [python3, {APPS}, http, '8080']
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
      - name: udp
        command: [python3, {APPS}, udp, '9999', '5353']
"""
CLOSED = """      - name: main
        command: [sleep, '3600']
        readinessProbe: {tcpSocket: {port: 7070}, periodSeconds: 1, failureThreshold: 1}
"""
NAMESPACES = """apiVersion: v1
kind: Namespace
metadata: {name: trfstrict, labels: {nodemesh.io/mesh: enabled},
           annotations: {nodemesh.io/inbound-mode: strict}}
---
apiVersion: v1
kind: Namespace
metadata: {name: trfmesh, labels: {nodemesh.io/mesh: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: trfplain}
"""


class Lab:
    def __init__(self, paths: LabPaths, tmp: Path) -> None:
        self.paths = paths
        self.name = paths.name
        self.tmp = tmp

    def apply(self, text: str, *, wait: bool) -> None:
        f = self.tmp / f"m-{secrets.token_hex(3)}.yml"
        f.write_text(text)
        extra = ("--wait", "--timeout", "180") if wait else ()
        nm("lab", "apply", "--name", self.name, "-f", str(f), *extra)

    def exec_argv(self, ns: str, target: str, *args: str) -> list[str]:
        return [NODEMESH, "lab", "exec", "--name", self.name, "-n", ns, target, "--",
                "python3", APPS, *args]  # fmt: skip

    def run(self, ns: str, target: str, *args: str) -> dict[str, object]:
        res = subprocess.run(
            self.exec_argv(ns, target, *args), capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
        return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def pod(self, ns: str, prefix: str) -> dict[str, object]:
        st = json.loads(nm("lab", "status", "--name", self.name, "-o", "json"))
        (pod,) = [p for p in st["pods"] if p["namespace"] == ns and p["name"].startswith(prefix)]
        return pod  # type: ignore[no-any-return]

    def wait_pod(
        self, ns: str, prefix: str, what: Callable[[dict[str, object]], bool], timeout: float
    ) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                pod = self.pod(ns, prefix)
                if what(pod):
                    return pod
            except ValueError:  # not created yet
                pod = {}
            if time.monotonic() > deadline:
                raise AssertionError(f"{ns}/{prefix}: still {pod} after {timeout} s")
            time.sleep(1)

    def netns(self, ns: str, prefix: str) -> str:
        return self.paths.pod_netns(ns, str(self.pod(ns, prefix)["name"]))


def running(pod: dict[str, object]) -> bool:
    return pod.get("phase") == "Running" and bool(pod.get("ip"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name = "trf6" + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "1", "--api-port", "0", "--dashboard-port", "0")
        lab = Lab(LabPaths(name), tmp_path_factory.mktemp("trflab"))
        lab.apply(
            NAMESPACES + deploy("trfmesh", "client", SLEEPER)
            + deploy("trfplain", "outsider", SLEEPER),
            wait=True,
        )  # fmt: skip
        # Pods whose readiness is under test are not waited for here.
        lab.apply(
            NAMESPACES
            + deploy("trfstrict", "server", SERVER,
                     annotations="{nodemesh.io/allow-inbound-udp-ports: '5353'}")
            + deploy("trfplain", "plainserver", SERVER)
            + deploy("trfmesh", "closed", CLOSED)
            + deploy("trfplain", "closed", CLOSED),
            wait=False,
        )  # fmt: skip
        # Everything runs before the first test (the leak check looks at each test alone).
        for ns, pod in (
            ("trfstrict", "server"), ("trfplain", "plainserver"),
            ("trfmesh", "closed"), ("trfplain", "closed"),
        ):  # fmt: skip
            lab.wait_pod(ns, pod, running, 180)
        yield lab
    finally:
        for _ in range(2):  # a second pass for pods the supervisor was still starting
            subprocess.run(
                [NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300
            )


class Capture:
    """Every frame on every interface of a netns (the node: its bridge and the pods' veths)."""

    def __init__(self, netns: str) -> None:
        self.sock = socket_in_netns(
            netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)
        )
        self.sock.settimeout(0.2)
        self.frames: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.frames.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def saw(self, marker: str) -> int:
        return sum(marker.encode() in f for f in self.frames)


def in_rules(netns: str, tool: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, tool], capture_output=True, text=True, timeout=20, check=True
    ).stdout


def link_local(netns: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            ["ip", "-n", netns, "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
        if out and "tentative" not in out:
            return out.split()[3].split("/")[0]
        assert time.monotonic() < deadline, f"no link-local address in {netns}: {out!r}"
        time.sleep(0.5)


def test_ipv6_link_local_never_carries_plaintext_to_a_strict_meshed_pod(lab: Lab) -> None:
    server_ns = lab.netns("trfstrict", "server")
    assert "NODEMESH_PREROUTING" in in_rules(server_ns, "iptables-legacy-save")  # enrolled
    server6 = link_local(server_ns)
    plain6 = link_local(lab.netns("trfplain", "plainserver"))
    # The app answers on IPv6: the unmeshed twin is reachable that way (and the capture sees it).
    marker, control_marker = "trf-v6-" + secrets.token_hex(6), "trf-ctl-" + secrets.token_hex(6)
    cap = Capture(lab.paths.node_netns("node1"))
    try:
        control = {}
        deadline = time.monotonic() + 60
        while "status" not in control and time.monotonic() < deadline:
            control = lab.run("trfplain", "deploy/outsider", "get6", plain6, "eth0", "8080",
                              control_marker)  # fmt: skip
        assert str(control.get("status", "")).startswith("HTTP/1.0 200"), control
        from_mesh = lab.run("trfmesh", "deploy/client", "get6", server6, "eth0", "8080", marker)
        from_plain = lab.run("trfplain", "deploy/outsider", "get6", server6, "eth0", "8080",
                             marker)  # fmt: skip
        time.sleep(1)
    finally:
        cap.close()
    assert cap.saw(control_marker) > 0, "the capture saw nothing: it proves nothing"
    # Neither a meshed nor an unmeshed pod gets a plaintext request to the strict app.
    assert "status" not in from_mesh, from_mesh
    assert "status" not in from_plain, from_plain
    assert cap.saw(marker) == 0, "plaintext marker on the node's bridge"


def test_strict_pod_drops_inbound_udp_except_listed_ports(lab: Lab) -> None:
    server_ip = str(lab.pod("trfstrict", "server")["ip"])
    plain_ip = str(lab.pod("trfplain", "plainserver")["ip"])
    # Control: the unmeshed twin echoes on both ports.
    deadline = time.monotonic() + 60
    control: dict[str, object] = {}
    while "reply" not in control and time.monotonic() < deadline:
        control = lab.run("trfplain", "deploy/outsider", "udpask", plain_ip, "9999")
    assert control.get("reply") == "echo ping", control
    assert lab.run("trfplain", "deploy/outsider", "udpask", plain_ip, "5353").get("reply")
    # The strict pod: listed port answers, the other does not, for a meshed client as well
    # (UDP is never proxied, so no UDP sender is authenticated).
    listed = lab.run("trfplain", "deploy/outsider", "udpask", server_ip, "5353")
    assert listed.get("reply") == "echo ping", listed
    for ns, pod in (("trfplain", "deploy/outsider"), ("trfmesh", "deploy/client")):
        dropped = lab.run(ns, pod, "udpask", server_ip, "9999")
        assert "reply" not in dropped and "timed out" in str(dropped.get("error")), (ns, dropped)


def test_strict_pod_with_an_httpget_probe_becomes_ready(lab: Lab) -> None:
    lab.wait_pod("trfplain", "plainserver", lambda p: bool(p["ready"]), 120)
    lab.wait_pod("trfstrict", "server", lambda p: bool(p["ready"]), 120)


def test_tcpsocket_probe_on_a_closed_port_fails_meshed_or_not(lab: Lab) -> None:
    assert "NODEMESH_PREROUTING" in in_rules(lab.netns("trfmesh", "closed"), "iptables-legacy-save")
    # Probes run every second and one failure is enough: 10 s of probing and still not ready.
    time.sleep(10)
    for ns in ("trfmesh", "trfplain"):
        assert lab.pod(ns, "closed")["ready"] is False, ns
    # Something starts listening: both become ready.
    listeners = [
        subprocess.Popen(
            # By pod name: `deploy/NAME` picks a ready pod, and this one is not (yet).
            lab.exec_argv(ns, str(lab.pod(ns, "closed")["name"]), "listen", "7070", "45"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for ns in ("trfmesh", "trfplain")
    ]
    try:
        for ns, proc in zip(("trfmesh", "trfplain"), listeners, strict=True):
            try:
                lab.wait_pod(ns, "closed", lambda p: bool(p["ready"]), 40)
            except AssertionError as e:
                # `lab exec` of a pod that is not ready must work (as kubectl exec does).
                gone = proc.poll() is not None
                why = (
                    f"the listener exited {proc.returncode}: {proc.communicate()[1]}"
                    if gone
                    else ""
                )
                raise AssertionError(f"{e} {why}") from None
    finally:
        for proc in listeners:
            try:
                proc.communicate(timeout=90)  # also closes its stderr pipe
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=10)
    # ...and not ready again once the listener is gone.
    for ns in ("trfmesh", "trfplain"):
        lab.wait_pod(ns, "closed", lambda p: not p["ready"], 30)
